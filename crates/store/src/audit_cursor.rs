//! One session's audit cursor: how far its journal's audited records are
//! handed to the audit trail (`p`, pending) and confirmed there (`u`).

use baton_types::SessionId;

use crate::{CF_INDEXES, Result, Store, keys};

impl Store {
    /// Session `session`'s audit backlog: (confirmed up to, pending up to)
    /// when some records handed to the trail are not confirmed; none when
    /// there are none.
    pub async fn audit_backlog_of(&self, session: SessionId) -> Result<Option<(u64, u64)>> {
        self.blocking(move |db| {
            let read = |which: u8| -> Result<u64> {
                Ok(db
                    .get(CF_INDEXES, &keys::audit_key(which, &session))?
                    .and_then(|v| <[u8; 8]>::try_from(&v[..]).ok())
                    .map_or(0, u64::from_be_bytes))
            };
            let (pending, done) = (read(b'p')?, read(b'u')?);
            Ok((done < pending).then_some((done, pending)))
        })
        .await
    }
}
