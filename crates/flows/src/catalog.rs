//! The flows the server knows: definitions loaded from `[flows] dir` and
//! flows registered in code, by name, at their current version.
//!
//! The directory is read at start (a definition that does not check stops
//! the start, naming it) and again when it changes; a definition that no
//! longer checks on reload keeps its previous version and the error is
//! reported. Runs keep the version they started with: it is recorded in
//! their journal.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use crate::def::Flow;
use crate::error::{Error, Result};

/// What a reload found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Flows whose version changed (or that are new), as `name@version`.
    pub changed: Vec<String>,
    /// Flows gone from the directory.
    pub removed: Vec<String>,
    /// Definitions that do not check (their previous version stays).
    pub errors: Vec<String>,
}

#[derive(Debug, Default)]
struct State {
    flows: BTreeMap<String, Arc<Flow>>,
    /// Modification times of the files last read.
    fingerprint: Vec<(PathBuf, Option<SystemTime>)>,
    errors: Vec<String>,
}

/// The current flows.
#[derive(Debug)]
pub struct Catalog {
    dir: Option<PathBuf>,
    code: Vec<Arc<Flow>>,
    state: RwLock<State>,
}

fn is_definition(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("toml" | "yaml" | "yml")
    )
}

fn fingerprint(dir: &Path) -> Result<Vec<(PathBuf, Option<SystemTime>)>> {
    let rd = std::fs::read_dir(dir)
        .map_err(|e| Error::InvalidArgument(format!("flows.dir {}: {e}", dir.display())))?;
    let mut v: Vec<_> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| is_definition(p))
        .map(|p| {
            let m = std::fs::metadata(&p).and_then(|m| m.modified()).ok();
            (p, m)
        })
        .collect();
    v.sort();
    Ok(v)
}

/// Every definition in `dir`, and the errors of those that do not check.
fn load_dir(dir: &Path) -> Result<(Vec<Arc<Flow>>, Vec<String>)> {
    let mut flows: Vec<Arc<Flow>> = Vec::new();
    let mut errors = Vec::new();
    for (path, _) in fingerprint(dir)? {
        let name = path.display().to_string();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                errors.push(format!("{name}: {e}"));
                continue;
            }
        };
        let parsed = if path.extension().and_then(|e| e.to_str()) == Some("toml") {
            Flow::from_toml(&text)
        } else {
            Flow::from_yaml(&text)
        };
        match parsed {
            Ok(f) => {
                if let Some(other) = flows.iter().find(|o| o.name == f.name) {
                    errors.push(format!(
                        "{name}: flow {:?} is also defined in another file (version {})",
                        f.name, other.version
                    ));
                } else {
                    flows.push(Arc::new(f));
                }
            }
            Err(e) => errors.push(format!("{name}: {e}")),
        }
    }
    Ok((flows, errors))
}

impl Catalog {
    /// Load `dir` (when set) and the flows registered in code; any error
    /// refuses the start.
    pub fn open(dir: Option<PathBuf>, code: Vec<Flow>) -> Result<Catalog> {
        let code: Vec<Arc<Flow>> = code.into_iter().map(Arc::new).collect();
        let mut state = State::default();
        for f in &code {
            if state.flows.insert(f.name.clone(), f.clone()).is_some() {
                return Err(Error::InvalidArgument(format!(
                    "flow {:?} is registered twice",
                    f.name
                )));
            }
        }
        if let Some(d) = &dir {
            state.fingerprint = fingerprint(d)?;
            let (flows, errors) = load_dir(d)?;
            if !errors.is_empty() {
                return Err(Error::InvalidArgument(errors.join("\n")));
            }
            for f in flows {
                if state.flows.contains_key(&f.name) {
                    return Err(Error::InvalidArgument(format!(
                        "flow {:?} is both registered in code and defined in {}",
                        f.name,
                        d.display()
                    )));
                }
                state.flows.insert(f.name.clone(), f);
            }
        }
        Ok(Catalog {
            dir,
            code,
            state: RwLock::new(state),
        })
    }

    /// The current version of flow `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Flow>> {
        self.state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .flows
            .get(name)
            .cloned()
    }

    /// Every current flow, by name.
    pub fn list(&self) -> Vec<Arc<Flow>> {
        self.state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .flows
            .values()
            .cloned()
            .collect()
    }

    /// The errors of the last reload.
    pub fn errors(&self) -> Vec<String> {
        self.state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .errors
            .clone()
    }

    /// Whether the directory changed since it was last read.
    pub fn changed(&self) -> bool {
        let Some(d) = &self.dir else {
            return false;
        };
        let now = fingerprint(d).unwrap_or_default();
        self.state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .fingerprint
            != now
    }

    /// Read the directory again.
    pub fn reload(&self) -> Result<ReloadReport> {
        let Some(d) = &self.dir else {
            return Ok(ReloadReport::default());
        };
        let fp = fingerprint(d)?;
        let (flows, errors) = load_dir(d)?;
        let mut st = self.state.write().unwrap_or_else(|p| p.into_inner());
        let mut report = ReloadReport {
            errors: errors.clone(),
            ..ReloadReport::default()
        };
        let failed_files: Vec<&String> = errors.iter().collect();
        let mut next: BTreeMap<String, Arc<Flow>> = self
            .code
            .iter()
            .map(|f| (f.name.clone(), f.clone()))
            .collect();
        for f in flows {
            if next.contains_key(&f.name) {
                report.errors.push(format!(
                    "flow {:?} is registered in code; the file's definition is ignored",
                    f.name
                ));
                continue;
            }
            if st.flows.get(&f.name).map(|o| &o.version) != Some(&f.version) {
                report.changed.push(format!("{}@{}", f.name, f.version));
            }
            next.insert(f.name.clone(), f);
        }
        for (name, old) in &st.flows {
            if next.contains_key(name) {
                continue;
            }
            if failed_files.is_empty() {
                report.removed.push(name.clone());
            } else {
                // A file that does not check keeps its previous version.
                next.insert(name.clone(), old.clone());
            }
        }
        st.flows = next;
        st.fingerprint = fp;
        st.errors = report.errors.clone();
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reload_picks_up_changes_and_keeps_the_last_good_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.toml");
        let v1 = "name = \"a\"\n[[steps]]\nid = \"t\"\nkind = \"transform\"\nexpr = \"1\"\n";
        std::fs::write(&path, v1).expect("write");
        let c = Catalog::open(Some(dir.path().to_path_buf()), Vec::new()).expect("open");
        let first = c.get("a").expect("a").version.clone();

        std::fs::write(&path, v1.replace("\"1\"", "\"2\"")).expect("write");
        let r = c.reload().expect("reload");
        assert_eq!(r.changed.len(), 1);
        let second = c.get("a").expect("a").version.clone();
        assert_ne!(first, second);

        std::fs::write(
            &path,
            "name = \"a\"\n[[steps]]\nid = \"t\"\nkind = \"transform\"\nexpr = \"(\"\n",
        )
        .expect("write");
        let r = c.reload().expect("reload");
        assert_eq!(r.errors.len(), 1, "{r:?}");
        assert!(r.errors[0].contains("step \"t\", field \"expr\""), "{r:?}");
        assert_eq!(c.get("a").expect("kept").version, second);

        std::fs::write(
            dir.path().join("b.yaml"),
            "name: b\nsteps: [{id: x, kind: transform, expr: '3'}]\n",
        )
        .expect("write");
        std::fs::remove_file(&path).expect("rm");
        let r = c.reload().expect("reload");
        assert_eq!(r.removed, vec!["a".to_string()]);
        assert!(c.get("b").is_some());
    }

    #[test]
    fn a_broken_definition_refuses_the_start_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("bad.toml"), "name = \"x\"\nsteps = []\n").expect("write");
        let e = Catalog::open(Some(dir.path().to_path_buf()), Vec::new()).expect_err("refused");
        assert!(
            e.to_string()
                .contains("bad.toml: flow \"x\", field \"steps\""),
            "{e}"
        );
    }
}
