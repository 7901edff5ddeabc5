//! A rendered body kept until it is out of date: the status page and the history
//! documents are rendered on the first request after the history changed or a second
//! passed (ages and staleness move with the clock), and every other request clones it.
//! Nobody looking costs nothing; many looking cost one rendering a second.

use std::sync::Mutex;
use std::time::Duration;

use hyper::body::Bytes;
use tokio::time::Instant;

use crate::serve::metrics::{Exposition, gzip};

/// A rendering older than this is made again, whatever the history says.
pub const MAX_AGE: Duration = Duration::from_secs(1);

/// One body and when, and of which history generation, it was made.
#[derive(Debug, Default)]
pub struct Cache {
    last: Mutex<Option<(Instant, u64, Exposition)>>,
}

impl Cache {
    /// The body for `generation` as of `now`: the kept one while it is current, else
    /// `render`'s (kept, with its gzip copy).
    pub fn get(
        &self,
        generation: u64,
        now: Instant,
        render: impl FnOnce() -> String,
    ) -> Exposition {
        // Rendering under the lock: concurrent requests wait for the one rendering
        // (a millisecond) instead of each making their own.
        // A panic while rendering leaves no half-made body here: the lock is taken back.
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((at, g, body)) = last.as_ref()
            && *g == generation
            && now.saturating_duration_since(*at) < MAX_AGE
        {
            return body.clone();
        }
        let plain = render().into_bytes();
        let body = Exposition {
            gzip: gzip(&plain),
            plain: Bytes::from(plain),
        };
        *last = Some((now, generation, body.clone()));
        body
    }
}
