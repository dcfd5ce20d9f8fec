//! Listing sessions: one walk over the most selective source (a tenant's
//! index, the status index, or the sessions column family itself), in
//! either direction, with filters on what the session record holds and a
//! cap on the entries one page may read.

use baton_types::{SessionId, SessionStatus};

use crate::codec::{self, SessionMeta};
use crate::engine::{Dir, Engine, Seek};
use crate::{CF_INDEXES, CF_SESSIONS, Result, SessionPage, keys};

/// Which sessions a page lists, and how.
#[derive(Debug, Clone, Default)]
pub struct SessionScan {
    pub tenant: Option<String>,
    pub status: Option<SessionStatus>,
    /// Only sessions on this route.
    pub route: Option<String>,
    /// Only sessions whose metadata names this flow (the sessions of a
    /// flow's steps carry `flow`, `flow_run` and `flow_step`).
    pub flow: Option<String>,
    /// Start after this session (exclusive), in the page's direction.
    pub after: Option<SessionId>,
    pub limit: usize,
    /// Newest first (ids are UUID v7) instead of oldest first.
    pub newest_first: bool,
    /// Most entries one page reads (0: no cap). A filter that matches few
    /// sessions ends a page early at the cap, with `next_after` where the
    /// walk stopped, so no page reads the whole store.
    pub max_scan: usize,
}

impl SessionScan {
    fn admits(&self, meta: &SessionMeta) -> bool {
        self.status.is_none_or(|s| s == meta.status)
            && self.route.as_ref().is_none_or(|r| *r == meta.route)
            && self
                .flow
                .as_ref()
                .is_none_or(|f| meta.metadata.get("flow") == Some(f))
    }
}

pub(crate) fn scan_blocking(db: &dyn Engine, q: &SessionScan) -> Result<SessionPage> {
    // The source: its column family and the key prefix before the id.
    let (cf, prefix): (&'static str, Vec<u8>) = match (&q.tenant, q.status) {
        (Some(t), _) => (CF_INDEXES, keys::tenant_index_prefix(t)),
        (None, Some(s)) => (CF_INDEXES, keys::status_index_prefix(s).to_vec()),
        (None, None) => (CF_SESSIONS, Vec::new()),
    };
    let mut start = prefix.clone();
    match q.after {
        Some(a) => start.extend_from_slice(a.as_bytes()),
        None if q.newest_first => start.extend_from_slice(&[0xff; 17]),
        None => {}
    }
    let direction = if q.newest_first {
        Dir::Reverse
    } else {
        Dir::Forward
    };
    let mode = if prefix.is_empty() && q.after.is_none() && q.newest_first {
        Seek::Last
    } else {
        Seek::At(&start, direction)
    };
    let mut sessions = Vec::new();
    let mut scanned = 0usize;
    let mut last_seen = None;
    let mut more = false;
    for item in db.walk(cf, mode)? {
        let (k, v) = item?;
        if !k.starts_with(&prefix) {
            break;
        }
        let Some(id) = keys::session_from_slice(&k[prefix.len()..]) else {
            continue;
        };
        if Some(id) == q.after {
            continue;
        }
        if q.max_scan > 0 && scanned == q.max_scan {
            more = true;
            break;
        }
        scanned += 1;
        last_seen = Some(id);
        let meta = if cf == CF_SESSIONS {
            Some(codec::decode_meta(id, &v)?)
        } else {
            crate::load_meta_blocking(db, id)?
        };
        let Some(meta) = meta else { continue };
        if !q.admits(&meta) {
            continue;
        }
        if sessions.len() == q.limit {
            more = true;
            break;
        }
        sessions.push((id, meta));
    }
    let next_after = if more {
        if sessions.len() == q.limit {
            sessions.last().map(|(id, _)| *id)
        } else {
            last_seen
        }
    } else {
        None
    };
    Ok(SessionPage {
        sessions,
        next_after,
    })
}
