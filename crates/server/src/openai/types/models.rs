//! `GET /v1/models`: Baton's routes, as OpenAI models.

use serde::{Deserialize, Serialize};

/// `{"object": "list", "data": [...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelList {
    pub object: ListObject,
    pub data: Vec<Model>,
}

/// `"list"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListObject {
    #[default]
    List,
}

/// One model: a Baton route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Model {
    /// The route's name: what a request's `model` names.
    pub id: String,
    pub object: ModelObject,
    /// Always 0: routes have no creation time.
    pub created: u64,
    /// Always `baton`.
    pub owned_by: String,
}

/// `"model"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelObject {
    #[default]
    Model,
}

impl Model {
    /// The route `name` as a model.
    pub fn route(name: impl Into<String>) -> Self {
        Self {
            id: name.into(),
            object: ModelObject::Model,
            created: 0,
            owned_by: "baton".into(),
        }
    }
}

impl ModelList {
    /// Every route, as a model.
    pub fn routes(names: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            object: ListObject::List,
            data: names.into_iter().map(Model::route).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn routes_are_listed_as_models() {
        assert_eq!(
            serde_json::to_value(ModelList::routes(["fast", "smart"])).unwrap(),
            json!({"object": "list", "data": [
                {"id": "fast", "object": "model", "created": 0, "owned_by": "baton"},
                {"id": "smart", "object": "model", "created": 0, "owned_by": "baton"},
            ]})
        );
    }
}
