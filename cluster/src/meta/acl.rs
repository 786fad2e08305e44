//! POSIX access control lists (POSIX.1e draft 17, as Linux keeps them):
//! the binary format of the `system.posix_acl_access` and
//! `system.posix_acl_default` attributes, its validation, the access check,
//! and the rules that keep an access ACL and the mode in step. Leaves: pure
//! functions of bytes, modes and credentials.
//!
//! The format (Linux `posix_acl_xattr.h`): a little-endian `u32` version
//! (2), then entries of `u16` tag, `u16` permission bits (rwx), `u32` id.
//! The id means something only for named users and groups; the others
//! carry `ACL_UNDEFINED_ID`. A value of just the header is "no ACL".
//!
//! How an access ACL and the mode relate (Linux `posix_acl_equiv_mode`,
//! `__posix_acl_chmod`): the owner bits are the `USER_OBJ` entry, the other
//! bits the `OTHER` entry, and the group bits the `MASK` entry when there
//! is one, else `GROUP_OBJ`. An ACL of just those three entries says no
//! more than the mode, so it is not stored.

use super::limits::ACL_ENTRIES_MAX;
use super::types::Creds;

/// Name of the access ACL attribute.
pub(crate) const ACL_ACCESS: &[u8] = b"system.posix_acl_access";
/// Name of the default ACL attribute (directories: what new entries inherit).
pub(crate) const ACL_DEFAULT: &[u8] = b"system.posix_acl_default";

/// The only version of the format.
const ACL_XATTR_VERSION: u32 = 2;
const HEADER_BYTES: usize = 4;
const ENTRY_BYTES: usize = 8;
/// The id of entries that name nobody (`ACL_UNDEFINED_ID`); never a named id.
const UNDEFINED_ID: u32 = u32::MAX;

const TAG_USER_OBJ: u16 = 0x01;
const TAG_USER: u16 = 0x02;
const TAG_GROUP_OBJ: u16 = 0x04;
const TAG_GROUP: u16 = 0x08;
const TAG_MASK: u16 = 0x10;
const TAG_OTHER: u16 = 0x20;

/// rwx.
const PERM_BITS: u16 = 0o7;
/// The rwx bits of all three classes of a mode.
const MODE_RWX: u32 = 0o777;

/// Who an entry is about. The derived order is the order entries must
/// come in: owner, named users by id, owning group, named groups by id,
/// mask, other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Tag {
    UserObj,
    User(u32),
    GroupObj,
    Group(u32),
    Mask,
    Other,
}

/// One entry: a tag and its rwx bits (`0..=7`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub tag: Tag,
    pub perm: u32,
}

/// Why bytes are not an ACL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AclError {
    /// A version other than 2 (Linux answers `EOPNOTSUPP`).
    Version,
    /// Malformed or invalid (`EINVAL`), with what is wrong.
    Invalid(&'static str),
}

/// A valid ACL: entries in [`Tag`] order, no tag twice, exactly one owner,
/// owning group and other entry, and a mask if any entry is named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Acl {
    entries: Vec<Entry>,
}

impl Acl {
    /// The ACL in `bytes`, validated; `None` for a header without entries
    /// (which removes an ACL).
    pub fn decode(bytes: &[u8]) -> Result<Option<Self>, AclError> {
        let (header, body) = bytes
            .split_first_chunk::<HEADER_BYTES>()
            .ok_or(AclError::Invalid("an ACL shorter than its header"))?;
        if u32::from_le_bytes(*header) != ACL_XATTR_VERSION {
            return Err(AclError::Version);
        }
        if body.len() % ENTRY_BYTES != 0 {
            return Err(AclError::Invalid("an ACL ends inside an entry"));
        }
        if body.is_empty() {
            return Ok(None);
        }
        if body.len() / ENTRY_BYTES > ACL_ENTRIES_MAX {
            return Err(AclError::Invalid("an ACL has too many entries"));
        }
        let entries = body
            .chunks_exact(ENTRY_BYTES)
            .map(decode_entry)
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(entries).map(Some)
    }

    /// An ACL of `entries`, if they form a valid one (Linux
    /// `posix_acl_valid`, and named entries sorted by id without repeats,
    /// as libacl writes them).
    pub fn new(entries: Vec<Entry>) -> Result<Self, AclError> {
        if entries.iter().any(|e| e.perm & !u32::from(PERM_BITS) != 0) {
            return Err(AclError::Invalid("an ACL entry has bits other than rwx"));
        }
        if !entries.windows(2).all(|w| w[0].tag < w[1].tag) {
            return Err(AclError::Invalid(
                "ACL entries out of order or repeated (owner, users, group, groups, mask, other)",
            ));
        }
        let has = |wanted: Tag| entries.iter().any(|e| e.tag == wanted);
        if !(has(Tag::UserObj) && has(Tag::GroupObj) && has(Tag::Other)) {
            return Err(AclError::Invalid(
                "an ACL needs an owner, an owning group and an other entry",
            ));
        }
        let named = entries
            .iter()
            .any(|e| matches!(e.tag, Tag::User(_) | Tag::Group(_)));
        if named && !has(Tag::Mask) {
            return Err(AclError::Invalid("an ACL with named entries needs a mask"));
        }
        Ok(Self { entries })
    }

    /// The three-entry ACL that says what `mode` says.
    #[cfg(test)]
    pub fn from_mode(mode: u32) -> Self {
        Self {
            entries: vec![
                Entry {
                    tag: Tag::UserObj,
                    perm: (mode >> 6) & 0o7,
                },
                Entry {
                    tag: Tag::GroupObj,
                    perm: (mode >> 3) & 0o7,
                },
                Entry {
                    tag: Tag::Other,
                    perm: mode & 0o7,
                },
            ],
        }
    }

    /// The attribute value of this ACL.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES + self.entries.len() * ENTRY_BYTES);
        out.extend_from_slice(&ACL_XATTR_VERSION.to_le_bytes());
        for entry in &self.entries {
            let (tag, id) = match entry.tag {
                Tag::UserObj => (TAG_USER_OBJ, UNDEFINED_ID),
                Tag::User(id) => (TAG_USER, id),
                Tag::GroupObj => (TAG_GROUP_OBJ, UNDEFINED_ID),
                Tag::Group(id) => (TAG_GROUP, id),
                Tag::Mask => (TAG_MASK, UNDEFINED_ID),
                Tag::Other => (TAG_OTHER, UNDEFINED_ID),
            };
            out.extend_from_slice(&tag.to_le_bytes());
            // Bounded to rwx by construction.
            out.extend_from_slice(&(entry.perm as u16).to_le_bytes());
            out.extend_from_slice(&id.to_le_bytes());
        }
        out
    }

    #[cfg(test)]
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    fn perm_of(&self, tag: Tag) -> Option<u32> {
        self.entries.iter().find(|e| e.tag == tag).map(|e| e.perm)
    }

    fn entry_mut(&mut self, tag: Tag) -> Option<&mut Entry> {
        self.entries.iter_mut().find(|e| e.tag == tag)
    }

    /// Whether the ACL says no more than a mode: no mask and no named
    /// entry (Linux `posix_acl_equiv_mode` answering 0).
    pub fn is_minimal(&self) -> bool {
        self.entries
            .iter()
            .all(|e| matches!(e.tag, Tag::UserObj | Tag::GroupObj | Tag::Other))
    }

    /// The rwx bits of the mode this access ACL implies: owner, mask (or
    /// owning group), other.
    pub fn mode_bits(&self) -> u32 {
        let class = |tag| self.perm_of(tag).unwrap_or(0);
        let group = self
            .perm_of(Tag::Mask)
            .unwrap_or_else(|| class(Tag::GroupObj));
        class(Tag::UserObj) << 6 | group << 3 | class(Tag::Other)
    }

    /// `chmod`: the owner, mask (or owning group) and other entries take
    /// the rwx bits of `mode`; named entries stay (Linux `__posix_acl_chmod`).
    pub fn chmod(&mut self, mode: u32) {
        let group_tag = if self.perm_of(Tag::Mask).is_some() {
            Tag::Mask
        } else {
            Tag::GroupObj
        };
        for (tag, bits) in [
            (Tag::UserObj, mode >> 6),
            (group_tag, mode >> 3),
            (Tag::Other, mode),
        ] {
            if let Some(entry) = self.entry_mut(tag) {
                entry.perm = bits & 0o7;
            }
        }
    }

    /// A new inode's access ACL from its parent's default ACL (this one)
    /// and the mode asked for: the owner, mask (or owning group) and other
    /// entries keep only bits the mode has, and the mode only bits they
    /// grant. Returns the mode (its setid and sticky bits kept) (Linux
    /// `posix_acl_create_masq`).
    pub fn mask_for_create(&mut self, mode: u32) -> u32 {
        let group_tag = if self.perm_of(Tag::Mask).is_some() {
            Tag::Mask
        } else {
            Tag::GroupObj
        };
        let mut rwx = 0;
        for (tag, shift) in [(Tag::UserObj, 6), (group_tag, 3), (Tag::Other, 0)] {
            if let Some(entry) = self.entry_mut(tag) {
                entry.perm &= (mode >> shift) & 0o7;
                rwx |= entry.perm << shift;
            }
        }
        (mode & !MODE_RWX) | rwx
    }

    /// The POSIX.1e access check for a caller who does not own the file
    /// (the owner is decided by the mode's owner bits before any ACL):
    /// a named user entry, else the owning group and named groups that
    /// grant all of `want` (masked), else `EACCES` if the caller is in any
    /// of those groups, else the other entry (Linux `posix_acl_permission`).
    pub fn permits(&self, creds: &Creds, owner: u32, group: u32, want: u32) -> bool {
        let want = want & 0o7;
        let mask = self.perm_of(Tag::Mask).unwrap_or(0o7);
        let grants = |perm: u32| perm & want == want;
        let mut in_a_group = false;
        for entry in &self.entries {
            match entry.tag {
                Tag::UserObj if creds.uid == owner => return grants(entry.perm),
                Tag::User(uid) if creds.uid == uid => return grants(entry.perm & mask),
                Tag::GroupObj if creds.in_group(group) => {
                    in_a_group = true;
                    if grants(entry.perm) {
                        return grants(entry.perm & mask);
                    }
                }
                Tag::Group(gid) if creds.in_group(gid) => {
                    in_a_group = true;
                    if grants(entry.perm) {
                        return grants(entry.perm & mask);
                    }
                }
                Tag::Other => return !in_a_group && grants(entry.perm),
                _ => {}
            }
        }
        false
    }
}

/// One entry from its 8 bytes.
fn decode_entry(bytes: &[u8]) -> Result<Entry, AclError> {
    let word16 = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
    let tag = word16(0);
    let perm = word16(2);
    let id = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    if perm & !PERM_BITS != 0 {
        return Err(AclError::Invalid("an ACL entry has bits other than rwx"));
    }
    let named = |id: u32| {
        if id == UNDEFINED_ID {
            Err(AclError::Invalid(
                "a named ACL entry names the undefined id",
            ))
        } else {
            Ok(id)
        }
    };
    let tag = match tag {
        TAG_USER_OBJ => Tag::UserObj,
        TAG_USER => Tag::User(named(id)?),
        TAG_GROUP_OBJ => Tag::GroupObj,
        TAG_GROUP => Tag::Group(named(id)?),
        TAG_MASK => Tag::Mask,
        TAG_OTHER => Tag::Other,
        _ => return Err(AclError::Invalid("an ACL entry has an unknown tag")),
    };
    Ok(Entry {
        tag,
        perm: u32::from(perm),
    })
}

/// The attribute value of entries given as raw (tag, perm, id), valid or
/// not (for tests).
#[cfg(test)]
pub(crate) fn raw(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut out = ACL_XATTR_VERSION.to_le_bytes().to_vec();
    for &(tag, perm, id) in entries {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn e(tag: Tag, perm: u32) -> Entry {
        Entry { tag, perm }
    }

    /// `u::rwx,u:5:r--,g::r-x,g:7:rw-,m::rw-,o::---` style ACLs for tests.
    fn acl(entries: &[(Tag, u32)]) -> Acl {
        Acl::new(entries.iter().map(|&(t, p)| e(t, p)).collect()).expect("valid ACL")
    }

    const U: u32 = UNDEFINED_ID;

    #[test]
    fn decodes_what_setfacl_writes() {
        // setfacl -m u:1000:rw- on a 0640 file: owner rw, user 1000 rw,
        // group r, mask rw, other none.
        let bytes = raw(&[
            (TAG_USER_OBJ, 6, U),
            (TAG_USER, 6, 1000),
            (TAG_GROUP_OBJ, 4, U),
            (TAG_MASK, 6, U),
            (TAG_OTHER, 0, U),
        ]);
        let decoded = Acl::decode(&bytes).expect("valid").expect("not empty");
        assert_eq!(
            decoded.entries(),
            &[
                e(Tag::UserObj, 6),
                e(Tag::User(1000), 6),
                e(Tag::GroupObj, 4),
                e(Tag::Mask, 6),
                e(Tag::Other, 0),
            ]
        );
        assert_eq!(decoded.encode(), bytes);
        assert_eq!(decoded.mode_bits(), 0o660);
        assert!(!decoded.is_minimal());
        // Ids of unnamed entries are ignored and written back undefined.
        let loose = raw(&[
            (TAG_USER_OBJ, 7, 3),
            (TAG_GROUP_OBJ, 5, 0),
            (TAG_OTHER, 1, 9),
        ]);
        let minimal = Acl::decode(&loose).expect("valid").expect("not empty");
        assert_eq!(minimal, Acl::from_mode(0o751));
        assert!(minimal.is_minimal());
        assert_eq!(minimal.mode_bits(), 0o751);
        assert_eq!(Acl::decode(&raw(&[])), Ok(None), "header only: no ACL");
    }

    #[test]
    fn refuses_malformed_bytes() {
        let check = |bytes: &[u8], expected: AclError| {
            assert_eq!(Acl::decode(bytes), Err(expected), "{bytes:?}");
        };
        let check_invalid = |bytes: &[u8]| match Acl::decode(bytes) {
            Err(AclError::Invalid(_)) => {}
            other => panic!("{bytes:?}: {other:?}, expected EINVAL"),
        };
        let minimal = [
            (TAG_USER_OBJ, 6, U),
            (TAG_GROUP_OBJ, 4, U),
            (TAG_OTHER, 4, U),
        ];
        check_invalid(b"");
        check_invalid(&[2, 0, 0]);
        check(&1u32.to_le_bytes(), AclError::Version);
        let mut v3 = raw(&minimal);
        v3[0] = 3;
        check(&v3, AclError::Version);
        let mut torn = raw(&minimal);
        torn.pop();
        check_invalid(&torn);
        // Bits beyond rwx, unknown tags.
        check_invalid(&raw(&[
            (TAG_USER_OBJ, 8, U),
            (TAG_GROUP_OBJ, 4, U),
            (TAG_OTHER, 4, U),
        ]));
        check_invalid(&raw(&[
            (TAG_USER_OBJ, 6, U),
            (0x40, 4, U),
            (TAG_OTHER, 4, U),
        ]));
        // Missing required entries; repeated or misordered entries.
        check_invalid(&raw(&[(TAG_USER_OBJ, 6, U), (TAG_OTHER, 4, U)]));
        check_invalid(&raw(&[(TAG_GROUP_OBJ, 4, U), (TAG_OTHER, 4, U)]));
        check_invalid(&raw(&[(TAG_USER_OBJ, 6, U), (TAG_GROUP_OBJ, 4, U)]));
        check_invalid(&raw(&[
            (TAG_GROUP_OBJ, 4, U),
            (TAG_USER_OBJ, 6, U),
            (TAG_OTHER, 4, U),
        ]));
        check_invalid(&raw(&[
            (TAG_USER_OBJ, 6, U),
            (TAG_USER_OBJ, 6, U),
            (TAG_GROUP_OBJ, 4, U),
            (TAG_OTHER, 4, U),
        ]));
        // Named entries: need a mask, a real id, increasing ids.
        check_invalid(&raw(&[
            (TAG_USER_OBJ, 6, U),
            (TAG_USER, 6, 5),
            (TAG_GROUP_OBJ, 4, U),
            (TAG_OTHER, 4, U),
        ]));
        check_invalid(&raw(&[
            (TAG_USER_OBJ, 6, U),
            (TAG_USER, 6, U),
            (TAG_GROUP_OBJ, 4, U),
            (TAG_MASK, 6, U),
            (TAG_OTHER, 4, U),
        ]));
        check_invalid(&raw(&[
            (TAG_USER_OBJ, 6, U),
            (TAG_USER, 6, 9),
            (TAG_USER, 6, 5),
            (TAG_GROUP_OBJ, 4, U),
            (TAG_MASK, 6, U),
            (TAG_OTHER, 4, U),
        ]));
        check_invalid(&raw(&[
            (TAG_USER_OBJ, 6, U),
            (TAG_GROUP_OBJ, 4, U),
            (TAG_GROUP, 4, 5),
            (TAG_GROUP, 4, 5),
            (TAG_MASK, 6, U),
            (TAG_OTHER, 4, U),
        ]));
        check_invalid(&raw(&[
            (TAG_USER_OBJ, 6, U),
            (TAG_GROUP_OBJ, 4, U),
            (TAG_MASK, 6, U),
            (TAG_MASK, 6, U),
            (TAG_OTHER, 4, U),
        ]));
        // A mask alone is fine (and makes the ACL more than a mode).
        let masked = raw(&[
            (TAG_USER_OBJ, 6, U),
            (TAG_GROUP_OBJ, 6, U),
            (TAG_MASK, 4, U),
            (TAG_OTHER, 0, U),
        ]);
        let masked = Acl::decode(&masked).expect("valid").expect("not empty");
        assert!(!masked.is_minimal());
        assert_eq!(masked.mode_bits(), 0o640);
    }

    #[test]
    fn chmod_moves_the_mask_not_the_owning_group() {
        let mut with_mask = acl(&[
            (Tag::UserObj, 7),
            (Tag::User(5), 7),
            (Tag::GroupObj, 5),
            (Tag::Mask, 7),
            (Tag::Other, 5),
        ]);
        with_mask.chmod(0o640);
        assert_eq!(
            with_mask,
            acl(&[
                (Tag::UserObj, 6),
                (Tag::User(5), 7),
                (Tag::GroupObj, 5),
                (Tag::Mask, 4),
                (Tag::Other, 0),
            ])
        );
        assert_eq!(with_mask.mode_bits(), 0o640);
        let mut plain = Acl::from_mode(0o755);
        plain.chmod(0o4610);
        assert_eq!(plain, Acl::from_mode(0o610));
    }

    #[test]
    fn create_masks_the_inherited_acl_with_the_mode() {
        // A default ACL of u::rwx,u:5:rwx,g::r-x,m::rwx,o::r-x and
        // creat(0666): the file gets u::rw-,u:5:rwx,g::r-x,m::rw-,o::r--
        // and mode 0664 (getfacl then shows u:5 effective rw-).
        let mut inherited = acl(&[
            (Tag::UserObj, 7),
            (Tag::User(5), 7),
            (Tag::GroupObj, 5),
            (Tag::Mask, 7),
            (Tag::Other, 5),
        ]);
        assert_eq!(inherited.mask_for_create(0o666), 0o664);
        assert_eq!(
            inherited,
            acl(&[
                (Tag::UserObj, 6),
                (Tag::User(5), 7),
                (Tag::GroupObj, 5),
                (Tag::Mask, 6),
                (Tag::Other, 4),
            ])
        );
        // Without a mask the owning group is masked; special bits stay.
        let mut minimal = Acl::from_mode(0o750);
        assert_eq!(minimal.mask_for_create(0o2777), 0o2750);
        assert_eq!(minimal, Acl::from_mode(0o750));
        let mut minimal = Acl::from_mode(0o777);
        assert_eq!(minimal.mask_for_create(0o600), 0o600);
        assert_eq!(minimal, Acl::from_mode(0o600));
    }

    #[test]
    fn access_check() {
        // Owner 10, group 20; user 11 named rw-, group 30 named r--,
        // owning group r-x, mask r--, other --x.
        let a = acl(&[
            (Tag::UserObj, 7),
            (Tag::User(11), 6),
            (Tag::GroupObj, 5),
            (Tag::Group(30), 4),
            (Tag::Mask, 4),
            (Tag::Other, 1),
        ]);
        let check = |creds: Creds, want: u32, expected: bool| {
            assert_eq!(
                a.permits(&creds, 10, 20, want),
                expected,
                "{creds:?} want {want}"
            );
        };
        let with_groups = |uid, groups: &[u32]| Creds {
            uid,
            gid: 99,
            groups: groups.to_vec(),
        };
        check(Creds::user(10, 99), 7, true); // owner entry
        check(Creds::user(11, 99), 4, true); // named user, within the mask
        check(Creds::user(11, 99), 2, false); // named user, masked out
        check(Creds::user(11, 20), 1, false); // named user decides, not the group
        check(Creds::user(12, 20), 4, true); // owning group
        check(Creds::user(12, 20), 1, false); // owning group grants x, the mask does not
        check(with_groups(12, &[30]), 4, true); // named group
        check(with_groups(12, &[30]), 2, false); // in a group: other is not asked
        check(with_groups(12, &[30]), 1, false);
        check(Creds::user(12, 99), 1, true); // other
        check(Creds::user(12, 99), 4, false);
        check(Creds::user(12, 99), 0, true);
        // A group that grants all of the request wins over one that does not.
        let b = acl(&[
            (Tag::UserObj, 7),
            (Tag::GroupObj, 0),
            (Tag::Group(30), 6),
            (Tag::Mask, 7),
            (Tag::Other, 0),
        ]);
        assert!(b.permits(&with_groups(12, &[20, 30]), 10, 20, 6));
        assert!(!b.permits(&with_groups(12, &[20]), 10, 20, 4));
    }

    fn arb_acl() -> impl Strategy<Value = Acl> {
        let perm = 0u32..8;
        (
            perm.clone(),
            prop::collection::btree_map(0u32..50, perm.clone(), 0..4),
            perm.clone(),
            prop::collection::btree_map(0u32..50, perm.clone(), 0..4),
            prop::option::of(perm.clone()),
            perm,
        )
            .prop_map(|(owner, users, group, groups, mask, other)| {
                let mut entries = vec![e(Tag::UserObj, owner)];
                entries.extend(users.iter().map(|(&id, &p)| e(Tag::User(id), p)));
                entries.push(e(Tag::GroupObj, group));
                entries.extend(groups.iter().map(|(&id, &p)| e(Tag::Group(id), p)));
                let named = !users.is_empty() || !groups.is_empty();
                if let Some(m) = mask.or(named.then_some(7)) {
                    entries.push(e(Tag::Mask, m));
                }
                entries.push(e(Tag::Other, other));
                Acl::new(entries).expect("generated valid")
            })
    }

    proptest! {
        #[test]
        fn round_trip(a in arb_acl()) {
            prop_assert_eq!(Acl::decode(&a.encode()), Ok(Some(a)));
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(Some(a)) = Acl::decode(&bytes) {
                // What decodes is valid and encodes canonically.
                prop_assert_eq!(Acl::decode(&a.encode()), Ok(Some(a)));
            }
        }

        #[test]
        fn chmod_then_mode_bits_is_the_mode(mut a in arb_acl(), mode in 0u32..0o10000) {
            a.chmod(mode);
            prop_assert_eq!(a.mode_bits(), mode & 0o777);
        }

        #[test]
        fn created_mode_agrees_with_its_acl(mut a in arb_acl(), mode in 0u32..0o10000) {
            let created = a.mask_for_create(mode);
            prop_assert_eq!(created & !0o777, mode & !0o777);
            prop_assert_eq!(created & 0o777 & !mode, 0, "never more than asked");
            prop_assert_eq!(a.mode_bits(), created & 0o777);
        }

        /// A minimal ACL decides exactly as the mode's classes do.
        #[test]
        fn minimal_acl_is_the_mode(mode in 0u32..0o1000, uid in 0u32..3, gid in 0u32..3, want in 0u32..8) {
            let creds = Creds::user(uid, gid);
            let a = Acl::from_mode(mode);
            let class = if uid == 1 { mode >> 6 } else if gid == 1 { mode >> 3 } else { mode };
            prop_assert_eq!(a.permits(&creds, 1, 1, want), class & want & 7 == want);
        }
    }
}
