//! The fast path's fence: the one place that decides what
//! `billing_write_batch` checks before a batch decided on cached accounts
//! may write.
//!
//! A batch sent the fast way was decided on the writer's copies of its
//! accounts, without reading them under the locks. It may commit only if
//! every account is still as its copy was decided from: at that version,
//! with that event (named by its chain hash) at its head. A version alone
//! names a state only once committed; a copy decided from a batch still in
//! flight is named by its head, which covers the events that batch wrote.
//!
//! The SQL (migration `0011_write_batch_fenced_updates.sql`, see
//! `COMMENT ON FUNCTION` in `0012_drop_write_batch_0010.sql`) checks what
//! this module hands it and nothing else; it makes no choice of its own:
//!
//! - an account the batch updates is fenced by its UPDATE, whose WHERE asks
//!   for the version it expects (`updated_expected`) and, where
//!   [`SplitFence::updated_heads`] names one, that chain head;
//! - every other account decided from (every command on it refused, or
//!   updated from a version other than the one the fence names) goes to the
//!   fence proper (`fence_ids`, `fence_versions`, `fence_heads`), a
//!   statement of its own right after the locks;
//! - a head of `None` (no hashed event yet) checks the version alone.
//!
//! A row count short of the batch's is a serialization failure that aborts
//! the batch. The long way reads its accounts under the locks, so it sends
//! no fence: both halves are empty.

use uuid::Uuid;

/// What the fast path sends ahead of its writes: the accounts' locks, and
/// the version and chain head (`None` before the first hashed event) of each
/// account as it was decided from.
pub(crate) struct Fence<'a> {
    pub(crate) lock_keys: &'a [i64],
    pub(crate) ids: &'a [Uuid],
    pub(crate) versions: &'a [i64],
    pub(crate) heads: &'a [Option<Vec<u8>>],
}

/// The fence as `billing_write_batch` takes it: an account the batch updates
/// is fenced by its UPDATE (the version it was decided from, which is the
/// update's expected version, and the chain head in `updated_heads`); the
/// fence proper keeps the accounts decided from but not written.
pub(crate) struct SplitFence<'a> {
    /// `fence_ids`, `fence_versions`, `fence_heads`: the fence proper.
    pub(crate) ids: Vec<Uuid>,
    pub(crate) versions: Vec<i64>,
    pub(crate) heads: Vec<Option<&'a [u8]>>,
    /// `updated_heads`, one per updated account: its head where the fence
    /// named one.
    pub(crate) updated_heads: Vec<Option<&'a [u8]>>,
}

impl<'a> SplitFence<'a> {
    /// `updated_ids` and `expected` are the batch's updated accounts and the
    /// version each update expects, in the order they are sent.
    pub(crate) fn of(fence: Option<&Fence<'a>>, updated_ids: &[Uuid], expected: &[i64]) -> Self {
        let mut split = Self {
            ids: Vec::new(),
            versions: Vec::new(),
            heads: Vec::new(),
            updated_heads: vec![None; updated_ids.len()],
        };
        let Some(fence) = fence else {
            return split;
        };
        let mut updated: Vec<(Uuid, usize)> = updated_ids.iter().copied().zip(0..).collect();
        updated.sort_unstable();
        for ((id, version), head) in fence.ids.iter().zip(fence.versions).zip(fence.heads) {
            let head = head.as_deref();
            let at = updated
                .binary_search_by(|(u, _)| u.cmp(id))
                .ok()
                .map(|found| updated[found].1);
            // The update checks the version it expects: where that is the
            // version decided from, the update is this account's fence.
            match at {
                Some(i) if expected[i] == *version => split.updated_heads[i] = head,
                _ => {
                    split.ids.push(*id);
                    split.versions.push(*version);
                    split.heads.push(head);
                }
            }
        }
        split
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn without_a_fence_nothing_is_fenced() {
        let split = SplitFence::of(None, &[id(1), id(2)], &[3, 4]);
        assert!(split.ids.is_empty() && split.versions.is_empty() && split.heads.is_empty());
        assert_eq!(split.updated_heads, vec![None, None]);
    }

    #[test]
    fn an_updated_account_is_fenced_by_its_update_and_the_rest_by_the_fence_proper() {
        let (a, b, c, d) = (id(1), id(2), id(3), id(4));
        let heads = [Some(vec![0xaa]), Some(vec![0xbb]), None, Some(vec![0xdd])];
        let fence = Fence {
            lock_keys: &[],
            ids: &[a, b, c, d],
            versions: &[10, 20, 30, 40],
            heads: &heads,
        };
        // Updated out of the fence's order: d as decided from, a as decided
        // from, and b at a version other than the one decided from (so its
        // update cannot stand for the fence). c is decided from only.
        let updated = [d, b, a];
        let expected = [40, 21, 10];
        let split = SplitFence::of(Some(&fence), &updated, &expected);

        assert_eq!(split.ids, vec![b, c]);
        assert_eq!(split.versions, vec![20, 30]);
        assert_eq!(split.heads, vec![Some(&[0xbb][..]), None]);
        assert_eq!(
            split.updated_heads,
            vec![Some(&[0xdd][..]), None, Some(&[0xaa][..])]
        );
    }

    #[test]
    fn an_updated_account_without_a_head_yet_is_still_fenced_by_its_update() {
        let a = id(7);
        let heads = [None];
        let fence = Fence {
            lock_keys: &[],
            ids: &[a],
            versions: &[0],
            heads: &heads,
        };
        let split = SplitFence::of(Some(&fence), &[a], &[0]);
        assert!(split.ids.is_empty());
        assert_eq!(split.updated_heads, vec![None]);
    }
}
