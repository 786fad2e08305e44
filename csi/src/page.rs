//! ListVolumes pagination: a page of the sorted volume names and the
//! token of the next page. A token names the last volume a page returned
//! (hex-encoded, behind a prefix), so a volume deleted or created between
//! two pages moves no other volume to the wrong page; a token this driver
//! did not make is ABORTED, as the spec asks.

use std::ops::Range;

use crate::error::{Error, Result};
use crate::volume::{VolumeName, MAX_VOLUME_NAME_BYTES};

/// What every token starts with.
const TOKEN_PREFIX: &str = "after-";

/// The token of the page after the one that ended with `last`.
pub fn token_after(last: &VolumeName) -> String {
    use std::fmt::Write as _;
    let mut token = String::with_capacity(TOKEN_PREFIX.len() + 2 * last.as_str().len());
    token.push_str(TOKEN_PREFIX);
    for byte in last.as_str().bytes() {
        let _ = write!(token, "{byte:02x}");
    }
    token
}

/// The volume name a token names; ABORTED for a token not made by
/// [`token_after`].
pub fn name_in_token(token: &str) -> Result<VolumeName> {
    let aborted = || {
        Error::Aborted(format!(
            "starting_token {token:?} is not a token of this driver's ListVolumes"
        ))
    };
    let hex = token.strip_prefix(TOKEN_PREFIX).ok_or_else(aborted)?;
    if hex.len() % 2 != 0 || hex.len() > 2 * MAX_VOLUME_NAME_BYTES {
        return Err(aborted());
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(aborted)?;
    let text = String::from_utf8(bytes).map_err(|_| aborted())?;
    VolumeName::parse(&text).map_err(|_| aborted())
}

/// The indices of `sorted` (names in ascending order) on the page that
/// starts after `starting_token` ("": the first page) with at most
/// `max_entries` entries (0: all), and the next page's token ("": none).
pub fn page(
    sorted: &[VolumeName],
    starting_token: &str,
    max_entries: i32,
) -> Result<(Range<usize>, String)> {
    debug_assert!(sorted.windows(2).all(|w| w[0] < w[1]));
    let max_entries = usize::try_from(max_entries)
        .map_err(|_| Error::InvalidArgument(format!("max_entries is negative ({max_entries})")))?;
    let start = if starting_token.is_empty() {
        0
    } else {
        let after = name_in_token(starting_token)?;
        sorted.partition_point(|name| *name <= after)
    };
    let end = if max_entries == 0 {
        sorted.len()
    } else {
        sorted.len().min(start.saturating_add(max_entries))
    };
    let next = if end < sorted.len() && end > start {
        token_after(&sorted[end - 1])
    } else {
        String::new()
    };
    Ok((start..end, next))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names(list: &[&str]) -> Vec<VolumeName> {
        list.iter()
            .map(|n| VolumeName::parse(n).expect("a name"))
            .collect()
    }

    /// Every name, page by page.
    fn walk(sorted: &[VolumeName], max_entries: i32) -> Vec<VolumeName> {
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let (range, next) = page(sorted, &token, max_entries).expect("a page");
            seen.extend_from_slice(&sorted[range]);
            if next.is_empty() {
                return seen;
            }
            token = next;
        }
    }

    #[test]
    fn pages_cover_every_volume_once() {
        let all = names(&["a", "b", "c", "d", "e"]);
        for max in [0, 1, 2, 3, 5, 6] {
            assert_eq!(walk(&all, max), all, "max_entries {max}");
        }
        let (range, next) = page(&all, "", 2).expect("first page");
        assert_eq!((range, next.is_empty()), (0..2, false));
        assert_eq!(name_in_token(&next).ok(), Some(all[1].clone()));
        assert_eq!(page(&[], "", 3).ok(), Some((0..0, String::new())));
    }

    #[test]
    fn a_deleted_or_new_volume_moves_no_other_to_another_page() {
        let before = names(&["a", "b", "c", "d"]);
        let (_, token) = page(&before, "", 2).expect("first page");
        // "b", the last of the first page, is deleted and "bb" created.
        let after = names(&["a", "bb", "c", "d"]);
        let (range, next) = page(&after, &token, 2).expect("second page");
        assert_eq!(&after[range], &names(&["bb", "c"])[..]);
        assert!(!next.is_empty());
    }

    #[test]
    fn foreign_tokens_are_aborted_and_negative_sizes_invalid() {
        let all = names(&["a"]);
        for token in [
            "invalid-token",
            "after-",
            "after-6",
            "after-zz",
            "after-2e2e",
            "10",
        ] {
            assert!(
                matches!(page(&all, token, 0), Err(Error::Aborted(_))),
                "{token:?}"
            );
        }
        assert!(matches!(page(&all, "", -1), Err(Error::InvalidArgument(_))));
    }

    proptest! {
        #[test]
        fn tokens_round_trip(name in "[a-zA-Z0-9][a-zA-Z0-9._-]{0,127}") {
            let name = VolumeName::parse(&name).expect("a name");
            prop_assert_eq!(name_in_token(&token_after(&name)).ok(), Some(name));
        }

        #[test]
        fn any_page_size_lists_each_volume_once(
            set in proptest::collection::btree_set("[a-z0-9]{1,6}", 0..40),
            max in 0i32..10,
        ) {
            let sorted: Vec<VolumeName> = set.iter().map(|n| VolumeName::parse(n).expect("a name")).collect();
            prop_assert_eq!(walk(&sorted, max), sorted);
        }

        #[test]
        fn any_token_text_is_a_page_or_aborted(token in ".{0,300}") {
            let all = names(&["a", "b"]);
            match page(&all, &token, 1) {
                Ok((range, _)) => prop_assert!(range.end <= all.len()),
                Err(e) => prop_assert!(matches!(e, Error::Aborted(_))),
            }
        }
    }
}
