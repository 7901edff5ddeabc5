//! Which queues are watched when there are more than the cap: the configured ones, then
//! the longest.

use super::*;

/// The layout a walk's findings and the settings give. The prefix: as set; else the only
/// one with queues; else, among several, the one whose workers are heard, then the one with
/// most queues (then no prefix, then the first by name). The separators: as set; else the
/// workers' own (from their pidbox bindings), then those of the queues' bindings, most used
/// first. With nothing found (no binding set yet, or all flushed), what the `previous` walk
/// found holds; else kombu's defaults.
pub fn choose(
    found: &kombu::Found,
    prefix_set: Option<&[u8]>,
    sep_set: Option<&[u8]>,
    heard: &[&[u8]],
    previous: &Layout,
) -> Layout {
    let with_queues: Vec<&Vec<u8>> = found
        .prefixes
        .iter()
        .filter(|(_, b)| !b.queues.is_empty())
        .map(|(p, _)| p)
        .collect();
    let (prefix, prefix_from) = match prefix_set {
        Some(p) => (p.to_vec(), "set"),
        None => {
            let best = with_queues.iter().max_by_key(|p| {
                let queues = found.prefixes[p.as_slice()].queues.len();
                (
                    heard.contains(&p.as_slice()),
                    queues,
                    p.is_empty(),
                    std::cmp::Reverse(p.as_slice()),
                )
            });
            match best {
                Some(p) => (p.to_vec(), "found"),
                None => match heard.first() {
                    Some(p) => (p.to_vec(), "found"),
                    None if previous.prefix_from == "found" => (previous.prefix.clone(), "found"),
                    None => (Vec::new(), "default"),
                },
            }
        }
    };
    let bound = found.prefixes.get(&prefix);
    let seen_seps: Vec<Vec<u8>> = bound.map(|b| b.seps_in_use()).unwrap_or_default();
    let (seps, sep_from) = match sep_set {
        Some(sep) => (vec![sep.to_vec()], "set"),
        None if !seen_seps.is_empty() => (seen_seps.clone(), "found"),
        None if previous.sep_from == "found" && previous.prefix == prefix => {
            (previous.seps.clone(), "found")
        }
        None => (vec![DEFAULT_SEP.to_vec()], "default"),
    };
    let mut contradictions = Vec::new();
    if let Some(p) = prefix_set
        && !with_queues.is_empty()
        && !with_queues.iter().any(|q| q.as_slice() == p)
    {
        contradictions.push((
            format!(
                "SIDECAR_CELERY_KEYPREFIX is {}, but kombu's bindings on this broker are under {}",
                quoted([p]),
                quoted(with_queues.iter().map(|q| q.as_slice()))
            ),
            "unset SIDECAR_CELERY_KEYPREFIX (the sidecar finds the prefix itself), or set it to the app's broker_transport_options global_keyprefix".into(),
        ));
    }
    if let Some(sep) = sep_set
        && !seen_seps.is_empty()
        && !seen_seps.iter().any(|s| s.as_slice() == sep)
    {
        contradictions.push((
            format!(
                "SIDECAR_CELERY_SEP is {}, but the app's bindings use {}",
                quoted([sep]),
                quoted(seen_seps.iter().map(Vec::as_slice))
            ),
            "unset SIDECAR_CELERY_SEP (the sidecar finds the separator itself), or set it to the app's broker_transport_options sep".into(),
        ));
    }
    let workers_seps = bound
        .map(|b| {
            b.pidbox
                .iter()
                .map(|(sep, hosts)| (sep.clone(), hosts.iter().cloned().collect()))
                .collect()
        })
        .unwrap_or_default();
    Layout {
        workers_seps,
        other_prefixes: found
            .prefixes
            .keys()
            .filter(|p| **p != prefix)
            .cloned()
            .collect(),
        prefix,
        prefix_from,
        seps,
        sep_from,
        steps_seen: BTreeSet::new(),
        contradictions,
    }
}

/// The queues read each cycle: all known ones up to the cap; past it, every configured one
/// and the longest of the others (then by name).
pub(super) fn watch(known: &BTreeMap<String, Known>) -> Vec<String> {
    if known.len() <= MAX_QUEUES {
        return known.keys().cloned().collect();
    }
    let mut ranked: Vec<(&String, &Known)> = known.iter().collect();
    ranked.sort_by_key(|(name, k)| {
        (
            !k.configured,
            std::cmp::Reverse(k.length.unwrap_or(0)),
            *name,
        )
    });
    let mut watched: Vec<String> = ranked
        .into_iter()
        .take(MAX_QUEUES)
        .map(|(n, _)| n.clone())
        .collect();
    watched.sort();
    watched
}
