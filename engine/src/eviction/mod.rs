//! Eviction policies for the block slots of one tier of one shard.
//!
//! Each policy lives in its own file behind [`EvictionPolicy`] (as in
//! foyer): adding a policy is adding a file, a [`PolicyKind`] variant and an
//! arm in [`new_policy`]. Policies only order slot indices; they never see
//! keys, bytes or IO, and they decide nothing about *whether* a block enters
//! the cache (that is `crate::admission`).
//!
//! All policies are O(1) per operation ([`EvictionPolicy::victim`] is
//! O(skipped slots)) and allocate only in their constructor: their links are
//! arrays indexed by slot, sized to the tier's slot capacity.

mod auto;
#[cfg(test)]
mod check;
mod list;
mod lru;
mod mru;

use std::fmt;
use std::str::FromStr;

pub use self::auto::Auto;
pub use self::lru::Lru;
pub use self::mru::Mru;
pub use crate::slot::SlotIndex;

/// How the block was accessed: decided by the prefetch stream detector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessKind {
    /// Not part of a detected sequential stream.
    Random,
    /// Part of a sequential stream: read by it, or prefetched for it.
    Sequential,
}

/// Which eviction policy a tier uses; parsed from configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PolicyKind {
    /// Least recently used: see [`Lru`].
    Lru,
    /// Most recently used: see [`Mru`].
    Mru,
    /// Scan-resistant LRU driven by [`AccessKind`]: see [`Auto`].
    #[default]
    Auto,
}

impl PolicyKind {
    /// Every kind, in the order their names are listed to users.
    pub const ALL: [Self; 3] = [Self::Lru, Self::Mru, Self::Auto];

    /// The configuration name of this kind.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Lru => "lru",
            Self::Mru => "mru",
            Self::Auto => "auto",
        }
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PolicyKind {
    type Err = ParsePolicyKindError;

    /// Parses a configuration name; ASCII case is ignored.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| ParsePolicyKindError {
                name: name.to_owned(),
            })
    }
}

/// Error for an unknown eviction policy name; its message lists the valid
/// names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsePolicyKindError {
    name: String,
}

impl fmt::Display for ParsePolicyKindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown eviction policy {:?}: expected one of ",
            self.name
        )?;
        for (index, kind) in PolicyKind::ALL.into_iter().enumerate() {
            let separator = if index == 0 { "" } else { ", " };
            write!(f, "{separator}{kind}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ParsePolicyKindError {}

/// Orders the resident slots of one tier for eviction.
///
/// The caller owns residency: it calls [`EvictionPolicy::insert`] when a slot
/// is filled, [`EvictionPolicy::touch`] on every hit and
/// [`EvictionPolicy::remove`] when a slot is evicted or invalidated.
pub trait EvictionPolicy {
    /// Slot newly filled (not resident before; `debug_assert`ed).
    fn insert(&mut self, slot: SlotIndex, kind: AccessKind);

    /// Hit on a resident slot (`debug_assert`ed; ignored otherwise).
    fn touch(&mut self, slot: SlotIndex, kind: AccessKind);

    /// Explicit removal (eviction done / invalidation); no-op if not
    /// resident.
    fn remove(&mut self, slot: SlotIndex);

    /// Next slot to evict, skipping slots for which `skip` returns true
    /// (e.g. pinned by in-flight IO). Does not remove it.
    ///
    /// `skip` is called once per visited slot, in eviction order, and only
    /// with resident slots.
    fn victim(&self, skip: &mut dyn FnMut(SlotIndex) -> bool) -> Option<SlotIndex>;

    /// Number of resident slots.
    fn len(&self) -> usize;

    /// Whether no slot is resident.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `slot` is resident; `false` for out-of-range slots.
    fn contains(&self, slot: SlotIndex) -> bool;
}

/// Builds the policy `kind` for a tier of `capacity` slots.
///
/// # Panics
/// If `capacity` exceeds [`crate::slot::SLOT_COUNT_MAX`].
#[must_use]
pub fn new_policy(kind: PolicyKind, capacity: u32) -> Box<dyn EvictionPolicy> {
    match kind {
        PolicyKind::Lru => Box::new(Lru::new(capacity)),
        PolicyKind::Mru => Box::new(Mru::new(capacity)),
        PolicyKind::Auto => Box::new(Auto::new(capacity)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_kind_names_round_trip() {
        for kind in PolicyKind::ALL {
            assert_eq!(kind.to_string().parse::<PolicyKind>(), Ok(kind));
        }
        assert_eq!("LRU".parse::<PolicyKind>(), Ok(PolicyKind::Lru));
        assert_eq!(PolicyKind::default(), PolicyKind::Auto);
    }

    #[test]
    fn unknown_policy_name_lists_valid_names() {
        let error = "lfu".parse::<PolicyKind>().expect_err("invalid");
        assert_eq!(
            error.to_string(),
            "unknown eviction policy \"lfu\": expected one of lru, mru, auto"
        );
    }

    #[test]
    fn new_policy_starts_empty() {
        for kind in PolicyKind::ALL {
            let policy = new_policy(kind, 8);
            assert!(policy.is_empty());
            assert_eq!(policy.victim(&mut |_| false), None);
        }
    }
}
