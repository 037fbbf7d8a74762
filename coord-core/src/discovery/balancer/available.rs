//! Choosing among available endpoints: the weight an endpoint counts with,
//! random draws that skip unavailable endpoints, and the bounded scans the
//! pickers fall back to when the draws keep missing.

use crate::discovery::{Endpoint, InstanceStatus};

/// Random draws a picker makes before it falls back to a scan. Each draw
/// misses with the fraction of endpoints that are unavailable, so with a
/// quarter of them out four draws all miss once in 256 picks.
pub(super) const DRAWS: usize = 4;

/// The weight an endpoint counts with in the weighted pickers: 0 when it is
/// not `Up` (it can never become available), else its weight and at least 1
/// (validation rejects an `Up` instance of weight 0 anyway).
pub(super) fn pick_weight(endpoint: &Endpoint) -> u32 {
    if endpoint.instance().status == InstanceStatus::Up {
        endpoint.weight().max(1)
    } else {
        0
    }
}

/// `load` per unit of `endpoint`'s weight (at least 1), for the
/// least-loaded pickers: an endpoint of weight 3 counts its load a third as
/// much, so it is given about three times the calls in flight of an
/// endpoint of weight 1 (Envoy's weighted least request, with an active
/// request bias of 1). With equal weights the order of the loads is kept.
#[inline]
pub(super) fn per_weight(load: f64, endpoint: &Endpoint) -> f64 {
    load / f64::from(endpoint.weight().max(1))
}

/// Whether the endpoints' weights differ: the least-loaded pickers compare
/// plain loads when they do not (the same order, without a division).
pub(super) fn weights_differ(endpoints: &[Endpoint]) -> bool {
    endpoints
        .split_first()
        .is_some_and(|(first, rest)| rest.iter().any(|e| e.weight() != first.weight()))
}

/// The calls in flight plus one, per unit of weight ([`per_weight`]): the
/// plus one makes an idle endpoint of weight 3 beat an idle one of weight 1.
#[inline]
pub(super) fn in_flight_per_weight(endpoint: &Endpoint) -> f64 {
    per_weight(f64::from(endpoint.in_flight()) + 1.0, endpoint)
}

/// The first available endpoint at `start` or after it, wrapping around.
#[inline]
pub(super) fn scan_from(endpoints: &[Endpoint], start: usize) -> Option<&Endpoint> {
    let (before, after) = endpoints.split_at(start.min(endpoints.len()));
    after.iter().chain(before).find(|e| e.is_available())
}

/// The index of an available endpoint drawn uniformly among all but
/// `except`, or `None` when [`DRAWS`] draws all missed.
#[inline]
pub(super) fn draw(endpoints: &[Endpoint], except: Option<usize>) -> Option<usize> {
    let n = endpoints.len();
    let range = if except.is_some() { n - 1 } else { n };
    if range == 0 {
        return None;
    }
    for _ in 0..DRAWS {
        let mut i = fastrand::usize(..range);
        if except.is_some_and(|e| i >= e) {
            i += 1;
        }
        if endpoints[i].is_available() {
            return Some(i);
        }
    }
    None
}

/// A uniformly drawn available endpoint; after [`DRAWS`] misses, the first
/// available one after a random index.
#[inline]
pub(super) fn random_available(endpoints: &[Endpoint]) -> Option<&Endpoint> {
    if endpoints.is_empty() {
        return None;
    }
    match draw(endpoints, None) {
        Some(i) => Some(&endpoints[i]),
        None => scan_from(endpoints, fastrand::usize(..endpoints.len())),
    }
}

/// The least loaded of `choices` available endpoints drawn at random, each
/// drawn among all but the best so far (so two choices are two distinct
/// endpoints). Ties go to the earlier draw. When the set has no more than
/// `choices` endpoints, or the first draws all miss, the least loaded of all
/// the available ones.
#[inline]
pub(super) fn best_of<L, F>(endpoints: &[Endpoint], choices: usize, load: F) -> Option<&Endpoint>
where
    L: PartialOrd,
    F: Fn(&Endpoint) -> L,
{
    if endpoints.len() <= choices {
        return least_loaded(endpoints, load);
    }
    let Some(mut best) = draw(endpoints, None) else {
        return least_loaded(endpoints, load);
    };
    let mut best_load = load(&endpoints[best]);
    for _ in 1..choices {
        if let Some(i) = draw(endpoints, Some(best)) {
            let l = load(&endpoints[i]);
            if l < best_load {
                best = i;
                best_load = l;
            }
        }
    }
    Some(&endpoints[best])
}

/// The least loaded available endpoint, scanning all of them from a random
/// start so that ties go to a random one.
fn least_loaded<L, F>(endpoints: &[Endpoint], load: F) -> Option<&Endpoint>
where
    L: PartialOrd,
    F: Fn(&Endpoint) -> L,
{
    if endpoints.is_empty() {
        return None;
    }
    let (before, after) = endpoints.split_at(fastrand::usize(..endpoints.len()));
    let mut best: Option<(&Endpoint, L)> = None;
    for e in after.iter().chain(before).filter(|e| e.is_available()) {
        let l = load(e);
        if best.as_ref().is_none_or(|(_, b)| l < *b) {
            best = Some((e, l));
        }
    }
    best.map(|(e, _)| e)
}
