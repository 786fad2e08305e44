//! Object listings (ListObjects V1 and V2) over a directory tree, sans IO:
//! the tree is a [`Tree`], which the gateway implements over fs.
//!
//! Keys come in byte order, as S3 lists them: a directory's entries are
//! walked sorted by `name` for files and `name/` for directories (every
//! key below a directory starts with `name/`, so this is the keys' order).
//! Only directories whose keys can match the prefix are entered, and only
//! those with keys after the marker. With a delimiter, the keys whose rest
//! after the prefix holds it are rolled into one common prefix, and a
//! directory whose path already holds it is not entered at all (a
//! `delimiter=/` listing reads one directory). A page ends after
//! `max_keys` entries (keys and common prefixes); the next starts after
//! the last one (a common prefix covers every key starting with it).

/// One entry of a directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Its name.
    pub name: String,
    /// Its inode.
    pub ino: u64,
    /// A directory (else a file; other kinds are not listed).
    pub dir: bool,
}

/// A directory tree to list.
pub trait Tree {
    /// The error of a read.
    type Error;
    /// The entries of directory `dir` (any order; names that are no key
    /// segment are skipped by the caller).
    fn entries(&mut self, dir: u64) -> Result<Vec<Entry>, Self::Error>;
}

/// One listed item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// A key and its file.
    Key(String, u64),
    /// A common prefix.
    Prefix(String),
}

impl Item {
    /// The key or the prefix.
    pub fn text(&self) -> &str {
        match self {
            Self::Key(key, _) | Self::Prefix(key) => key,
        }
    }
}

/// What to list.
#[derive(Clone, Debug, Default)]
pub struct Query<'a> {
    /// Keys start with this.
    pub prefix: &'a str,
    /// Roll keys up to this into common prefixes (none when empty).
    pub delimiter: &'a str,
    /// Only entries after this (a key or a common prefix).
    pub after: &'a str,
    /// At most this many entries.
    pub max_keys: usize,
}

/// A page of a listing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    /// Keys and common prefixes, in order.
    pub items: Vec<Item>,
    /// More entries follow the last one.
    pub truncated: bool,
}

/// Lists the bucket whose directory is `root`.
pub fn list<T: Tree>(tree: &mut T, root: u64, query: &Query<'_>) -> Result<Page, T::Error> {
    let mut walk = Walk {
        query,
        items: Vec::new(),
        // One more than a page tells whether it is truncated.
        limit: query.max_keys.saturating_add(1),
    };
    if query.max_keys > 0 {
        walk.dir(tree, root, "")?;
    }
    let truncated = walk.items.len() > query.max_keys;
    walk.items.truncate(query.max_keys);
    Ok(Page {
        items: walk.items,
        truncated,
    })
}

struct Walk<'q, 'a> {
    query: &'q Query<'a>,
    items: Vec<Item>,
    limit: usize,
}

impl Walk<'_, '_> {
    fn full(&self) -> bool {
        self.items.len() >= self.limit
    }

    /// The common prefix `path` rolls into, if the delimiter is in its
    /// rest after the prefix.
    fn rolled(&self, path: &str) -> Option<String> {
        let (prefix, delimiter) = (self.query.prefix, self.query.delimiter);
        if delimiter.is_empty() || !path.starts_with(prefix) {
            return None;
        }
        path[prefix.len()..]
            .find(delimiter)
            .map(|at| path[..prefix.len() + at + delimiter.len()].to_string())
    }

    fn push(&mut self, item: Item) {
        if item.text() <= self.query.after {
            return;
        }
        if let (Some(Item::Prefix(last)), Item::Prefix(new)) = (self.items.last(), &item) {
            if last == new {
                return;
            }
        }
        self.items.push(item);
    }

    fn dir<T: Tree>(&mut self, tree: &mut T, ino: u64, path: &str) -> Result<(), T::Error> {
        let mut entries: Vec<(String, Entry)> = tree
            .entries(ino)?
            .into_iter()
            .filter(|e| crate::key::check_segment(&e.name).is_ok())
            .map(|e| {
                let sort = if e.dir {
                    format!("{path}{}/", e.name)
                } else {
                    format!("{path}{}", e.name)
                };
                (sort, e)
            })
            .collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let (prefix, after) = (self.query.prefix, self.query.after);
        for (key, entry) in entries {
            if self.full() {
                break;
            }
            if entry.dir {
                // Keys below start with `key` ("…/name/").
                if !(key.starts_with(prefix) || prefix.starts_with(&key)) {
                    continue;
                }
                if let Some(rolled) = self.rolled(&key) {
                    self.push(Item::Prefix(rolled));
                    continue;
                }
                if key.as_str() < after && !after.starts_with(&key) {
                    continue;
                }
                self.dir(tree, entry.ino, &key)?;
            } else if key.starts_with(prefix) {
                match self.rolled(&key) {
                    Some(rolled) => self.push(Item::Prefix(rolled)),
                    None => self.push(Item::Key(key, entry.ino)),
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A tree of `paths` (files; their directories are made): inode
    /// numbers in order of appearance, entries returned in reverse order
    /// (the walk must sort them itself).
    struct Paths {
        dirs: BTreeMap<u64, Vec<Entry>>,
        reads: usize,
    }

    impl Paths {
        fn new(paths: &[&str]) -> Self {
            let mut dirs: BTreeMap<u64, Vec<Entry>> = BTreeMap::from([(1, Vec::new())]);
            let mut by_path: BTreeMap<String, u64> = BTreeMap::new();
            let mut next = 2;
            for path in paths {
                let mut parent = 1;
                let parts: Vec<&str> = path.split('/').collect();
                for (i, part) in parts.iter().enumerate() {
                    let sofar = parts[..=i].join("/");
                    let dir = i + 1 < parts.len();
                    let ino = *by_path.entry(sofar).or_insert_with(|| {
                        next += 1;
                        dirs.entry(parent).or_default().push(Entry {
                            name: (*part).to_string(),
                            ino: next,
                            dir,
                        });
                        if dir {
                            dirs.insert(next, Vec::new());
                        }
                        next
                    });
                    parent = ino;
                }
            }
            Self { dirs, reads: 0 }
        }
    }

    impl Tree for Paths {
        type Error = ();
        fn entries(&mut self, dir: u64) -> Result<Vec<Entry>, ()> {
            self.reads += 1;
            let mut entries = self.dirs.get(&dir).cloned().ok_or(())?;
            entries.reverse();
            Ok(entries)
        }
    }

    const PATHS: &[&str] = &["a/b/c", "a/b/d", "a.txt", "a0", "a-1", "b/x", "b/y/z", "c"];

    fn texts(page: &Page) -> Vec<&str> {
        page.items.iter().map(Item::text).collect()
    }

    fn query<'a>(prefix: &'a str, delimiter: &'a str, after: &'a str, max: usize) -> Query<'a> {
        Query {
            prefix,
            delimiter,
            after,
            max_keys: max,
        }
    }

    #[test]
    fn keys_come_in_byte_order_whatever_the_directories_hold() {
        let mut tree = Paths::new(PATHS);
        let page = list(&mut tree, 1, &query("", "", "", 1000)).expect("list");
        assert_eq!(
            texts(&page),
            ["a-1", "a.txt", "a/b/c", "a/b/d", "a0", "b/x", "b/y/z", "c"]
        );
        let mut sorted = texts(&page);
        sorted.sort_unstable();
        assert_eq!(sorted, texts(&page));
        assert!(!page.truncated);
    }

    #[test]
    fn a_slash_delimiter_lists_one_directory() {
        let mut tree = Paths::new(PATHS);
        let page = list(&mut tree, 1, &query("", "/", "", 1000)).expect("list");
        assert_eq!(texts(&page), ["a-1", "a.txt", "a/", "a0", "b/", "c"]);
        assert_eq!(tree.reads, 1, "no directory below the root was read");
        let page = list(&mut tree, 1, &query("b/", "/", "", 1000)).expect("list");
        assert_eq!(texts(&page), ["b/x", "b/y/"]);
        let page = list(&mut tree, 1, &query("a", "/", "", 1000)).expect("list");
        assert_eq!(texts(&page), ["a-1", "a.txt", "a/", "a0"]);
        let page = list(&mut tree, 1, &query("a/b/", "/", "", 1000)).expect("list");
        assert_eq!(texts(&page), ["a/b/c", "a/b/d"]);
        // Other delimiters roll keys up too.
        let page = list(&mut tree, 1, &query("", "-", "", 1000)).expect("list");
        assert_eq!(texts(&page)[0], "a-");
        let page = list(&mut tree, 1, &query("", "b", "", 1000)).expect("list");
        assert_eq!(
            texts(&page),
            ["a-1", "a.txt", "a/b", "a0", "b", "c"],
            "keys with 'b' roll into the prefix up to it"
        );
    }

    #[test]
    fn pages_follow_each_other_without_gaps_or_repeats() {
        let mut tree = Paths::new(PATHS);
        for delimiter in ["", "/"] {
            let all = list(&mut tree, 1, &query("", delimiter, "", 1000)).expect("all");
            for size in 1..4 {
                let mut after = String::new();
                let mut seen = Vec::new();
                loop {
                    let page =
                        list(&mut tree, 1, &query("", delimiter, &after, size)).expect("page");
                    assert!(page.items.len() <= size);
                    seen.extend(page.items.iter().cloned());
                    if !page.truncated {
                        break;
                    }
                    after = page
                        .items
                        .last()
                        .expect("a truncated page holds items")
                        .text()
                        .to_string();
                }
                assert_eq!(seen, all.items, "pages of {size}, delimiter {delimiter:?}");
            }
        }
        let none = list(&mut tree, 1, &query("", "", "", 0)).expect("max 0");
        assert_eq!(none, Page::default());
    }

    #[test]
    fn prefixes_prune_the_walk() {
        let mut tree = Paths::new(PATHS);
        let page = list(&mut tree, 1, &query("b/y", "", "", 1000)).expect("list");
        assert_eq!(texts(&page), ["b/y/z"]);
        assert_eq!(tree.reads, 3, "the root, b and b/y only");
        let page = list(&mut tree, 1, &query("zz", "", "", 1000)).expect("list");
        assert!(page.items.is_empty());
    }
}
