//! How the queue probe finds kombu's layout on the broker: the binding sets (prefix,
//! separator, queues) walked a chunk at a time, and the queues ranked by length.

use super::*;

impl QueueProbe {
    /// A few SCAN pages of the binding-set walk; when the walk has covered the keyspace,
    /// SMEMBERS pipelines turn the sets into the layout and the queues, and the next walk
    /// starts at the next cycle. Progress is kept after each page, so a walk cut short by
    /// the time limit goes on where it stopped.
    pub(super) async fn discover(
        &self,
        conn: &mut MultiplexedConnection,
    ) -> Result<(), RedisError> {
        for _ in 0..SCAN_PAGES {
            let cursor = {
                let mut s = self.state();
                let walk = s.walk.get_or_insert_with(Walk::default);
                if walk.scanned {
                    break;
                }
                walk.cursor
            };
            let span = otel::Command::new(self.pool.target(), "SCAN", None);
            let page = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(Naming::binding_pattern())
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .query_async(conn)
                .instrument(span.span().clone())
                .await;
            let (next, keys): (u64, Vec<Vec<u8>>) = self.traced(span, page)?;
            let mut s = self.state();
            let walk = s.walk.get_or_insert_with(Walk::default);
            walk.sets.extend(keys);
            walk.sets.truncate(MAX_BINDING_SETS);
            walk.cursor = next;
            walk.scanned = next == 0;
        }
        // The sets to read: the new ones, or all of them once a RANK_EVERY (a queue bound
        // to an exchange that already had a set, or unbound from one, shows then). Read a
        // chunk at a time, each kept as it comes, so a walk cut short by the time limit
        // goes on where it stopped.
        {
            let mut guard = self.state();
            let s = &mut *guard;
            let sets_read = s.sets_read;
            let known = &s.sets;
            let Some(w) = s.walk.as_mut().filter(|w| w.scanned) else {
                return Ok(());
            };
            if w.todo.is_none() {
                w.sets.sort_unstable();
                w.sets.dedup();
                w.all = sets_read.is_none_or(|t| t.elapsed() >= RANK_EVERY);
                w.todo = Some(if w.all {
                    w.sets.clone()
                } else {
                    w.sets
                        .iter()
                        .filter(|k| !known.contains_key(*k))
                        .cloned()
                        .collect()
                });
            }
        }
        loop {
            let chunk: Vec<Vec<u8>> = {
                let s = self.state();
                match s.walk.as_ref().and_then(|w| w.todo.as_ref()) {
                    Some(todo) if !todo.is_empty() => {
                        todo.iter().take(READ_CHUNK).cloned().collect()
                    }
                    _ => break,
                }
            };
            let mut pipe = redis::pipe();
            for key in &chunk {
                pipe.cmd("SMEMBERS").arg(key);
            }
            let span = otel::Command::new(self.pool.target(), "PIPELINE", Some(chunk.len()));
            let reply = pipe.query_async(conn).instrument(span.span().clone()).await;
            let members: Vec<Vec<Vec<u8>>> = self.traced(span, reply)?;
            let mut s = self.state();
            if let Some(w) = s.walk.as_mut()
                && let Some(todo) = w.todo.as_mut()
            {
                todo.drain(..chunk.len().min(todo.len()));
                w.read.extend(chunk.into_iter().zip(members));
            }
        }
        let found = {
            let mut guard = self.state();
            let s = &mut *guard;
            let Some(w) = s.walk.take() else {
                return Ok(());
            };
            if w.all {
                s.sets.clear();
                s.sets_read = Some(Instant::now());
            }
            let before = s.sets.len();
            s.sets.retain(|k, _| w.sets.binary_search(k).is_ok());
            // The apps whose workers are heard changed: the choice of prefix may too.
            let live = live_prefixes(&s.heard);
            let changed = w.all || !w.read.is_empty() || s.sets.len() != before || live != s.live;
            s.live = live;
            s.sets.extend(w.read);
            // The same sets as the last walk: nothing to choose again, only the unbound
            // queues to look at.
            changed.then(|| {
                let sets: Vec<(Vec<u8>, Vec<Vec<u8>>)> =
                    s.sets.iter().map(|(k, m)| (k.clone(), m.clone())).collect();
                kombu::Found::read(&sets, self.configured_sep())
            })
        };
        match found {
            Some(found) => self.settle(found),
            None => self.walked(),
        }
        if self.rank_due() {
            self.rank(conn).await?;
        }
        Ok(())
    }

    /// The separator as set, to read members with.
    pub(super) fn configured_sep(&self) -> Option<&[u8]> {
        self.sep_set.then(|| self.configured.sep())
    }

    /// A finished walk: the layout chosen, the queues known updated (a queue whose binding
    /// is gone stays while it holds messages), and the watched set recomputed.
    pub(super) fn settle(&self, found: kombu::Found) {
        let mut guard = self.state();
        let s = &mut *guard;
        let now = Instant::now();
        let live: Vec<&[u8]> = s.live.iter().map(Vec::as_slice).collect();
        let chosen = choose(
            &found,
            self.prefix_set.then(|| self.configured.prefix()),
            self.configured_sep(),
            &live,
            &s.layout,
        );
        if chosen.prefix != s.layout.prefix || chosen.seps != s.layout.seps {
            tracing::info!(
                prefix = %escape(&chosen.prefix),
                prefix_from = chosen.prefix_from,
                separators = %chosen.seps.iter().map(|s| escape(s)).collect::<Vec<_>>().join(" "),
                "reading kombu's keys with this key prefix and separator"
            );
        }
        s.naming = self
            .configured
            .with_layout(chosen.prefix.clone(), chosen.seps.clone());
        let steps_seen = std::mem::take(&mut s.layout.steps_seen);
        s.layout = Layout {
            steps_seen,
            ..chosen
        };
        let bound = found.queues(&s.layout.prefix);
        for name in &bound {
            s.known.entry(name.clone()).or_default().bound = true;
        }
        // Unbound, a queue stays while it holds messages (and a while after, so that a
        // queue emptied and refilled at once is not lost).
        s.known.retain(|name, k| {
            k.bound = bound.contains(name);
            k.bound
                || k.configured
                || k.nonempty
                    .is_some_and(|t| now.saturating_duration_since(t) < RANK_EVERY)
        });
        s.watched = watch(&s.known);
        s.walk = None;
        s.walked = Some(now);
    }

    /// A walk that found the same binding sets as the last one: the queues whose binding is
    /// gone are dropped once they have been empty a while.
    pub(super) fn walked(&self) {
        let mut s = self.state();
        let now = Instant::now();
        let before = s.known.len();
        s.known.retain(|_, k| {
            k.bound
                || k.configured
                || k.nonempty
                    .is_some_and(|t| now.saturating_duration_since(t) < RANK_EVERY)
        });
        if s.known.len() != before {
            s.watched = watch(&s.known);
        }
        s.walked = Some(now);
    }

    pub(super) fn rank_due(&self) -> bool {
        let s = self.state();
        s.known.len() > MAX_QUEUES && s.ranked.is_none_or(|t| t.elapsed() >= RANK_EVERY)
    }

    /// Measures the queues left out by the cap (their keys under the steps seen), so that
    /// the longest are kept.
    pub(super) async fn rank(&self, conn: &mut MultiplexedConnection) -> Result<(), RedisError> {
        let (naming, outside, steps) = {
            let s = self.state();
            let watched: BTreeSet<&String> = s.watched.iter().collect();
            let outside: Vec<String> = s
                .known
                .keys()
                .filter(|q| !watched.contains(q))
                .cloned()
                .collect();
            (s.naming.clone(), outside, s.layout.steps_seen.clone())
        };
        let mut measured = Vec::with_capacity(outside.len());
        for chunk in outside.chunks(RANK_CHUNK / (steps.len() + 1)) {
            let mut pipe = redis::pipe();
            let mut per_queue = Vec::with_capacity(chunk.len());
            for q in chunk {
                let keys: Vec<Vec<u8>> = naming
                    .queue_keys(q)
                    .into_iter()
                    .filter(|k| k.counted && (k.step == 0 || steps.contains(&k.step)))
                    .map(|k| k.key)
                    .collect();
                per_queue.push(keys.len());
                for key in keys {
                    pipe.cmd("LLEN").arg(key);
                }
            }
            let span = otel::Command::new(self.pool.target(), "PIPELINE", Some(pipe.len()));
            let reply = pipe.query_async(conn).instrument(span.span().clone()).await;
            let lengths: Vec<u64> = self.traced(span, reply)?;
            let mut lengths = lengths.into_iter();
            for (q, n) in chunk.iter().zip(per_queue) {
                measured.push((q.clone(), lengths.by_ref().take(n).sum::<u64>()));
            }
        }
        let mut s = self.state();
        for (q, length) in measured {
            if let Some(k) = s.known.get_mut(&q) {
                k.length = Some(length);
            }
        }
        s.watched = watch(&s.known);
        s.ranked = Some(Instant::now());
        Ok(())
    }
}
