//! Tree blobs: one directory's entries, sorted by name, with full metadata.
//!
//! A tree is stored as a blob in a metadata pack; its id is the BLAKE3 of its encoding, so an
//! unchanged directory encodes to the same bytes and is stored once. Decoding validates every name
//! so that no tree, however crafted, can name a path outside the directory it describes.

use serde::{Deserialize, Serialize};

use crate::envelope::{self, Kind};
use crate::{BlobId, FormatError, Timestamp};

const WHAT: &str = "tree";

/// Longest accepted entry name, in bytes (Linux NAME_MAX).
pub const MAX_NAME_LEN: usize = 255;

/// One directory.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    /// Entries in strictly increasing byte order of `name`.
    pub entries: Vec<Entry>,
}

/// One directory entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The file name: one path component, raw bytes (not necessarily UTF-8).
    #[serde(with = "serde_bytes_vec")]
    pub name: Vec<u8>,
    /// What the entry is.
    pub node: Node,
    /// Ownership, permissions, times and extended attributes.
    pub meta: Meta,
}

/// The type-specific part of an entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Node {
    /// A regular file.
    File {
        /// Length in bytes.
        size: u64,
        /// The content, in order; the lengths add up to `size`.
        extents: Vec<Extent>,
        /// Files of one snapshot sharing a link group are hard links to one inode.
        link_group: Option<u64>,
    },
    /// A directory whose entries are the tree `tree`.
    Dir {
        /// The subtree's blob id.
        tree: BlobId,
    },
    /// A symbolic link (the target is stored as is, never followed).
    Symlink {
        /// The link target bytes.
        #[serde(with = "serde_bytes_vec")]
        target: Vec<u8>,
    },
    /// A named pipe.
    Fifo,
    /// A character device.
    CharDevice {
        /// Device number (`st_rdev`).
        rdev: u64,
    },
    /// A block device.
    BlockDevice {
        /// Device number (`st_rdev`).
        rdev: u64,
    },
}

/// A run of a file's content.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Extent {
    /// Bytes stored as the blob `id` of `len` bytes.
    Chunk {
        /// The blob.
        id: BlobId,
        /// Its uncompressed length.
        len: u32,
    },
    /// A hole of `len` zero bytes that occupies no disk space.
    Hole {
        /// Length in bytes.
        len: u64,
    },
}

impl Extent {
    /// The number of file bytes this extent covers.
    pub fn len(&self) -> u64 {
        match *self {
            Extent::Chunk { len, .. } => u64::from(len),
            Extent::Hole { len } => len,
        }
    }

    /// Whether the extent covers no bytes (never true of a valid tree).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Metadata common to every entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Permission bits including setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    /// Numeric owner.
    pub uid: u32,
    /// Numeric group.
    pub gid: u32,
    /// Modification time.
    pub mtime: Timestamp,
    /// Extended attributes, sorted by name.
    pub xattrs: Vec<Xattr>,
}

/// One extended attribute.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xattr {
    /// Attribute name, e.g. `user.comment`.
    #[serde(with = "serde_bytes_vec")]
    pub name: Vec<u8>,
    /// Attribute value.
    #[serde(with = "serde_bytes_vec")]
    pub value: Vec<u8>,
}

/// Checks that `name` is one safe path component.
///
/// # Errors
/// [`FormatError::Malformed`] for an empty name, `.`, `..`, a name containing `/` or NUL, or one
/// longer than [`MAX_NAME_LEN`].
pub fn validate_name(name: &[u8]) -> Result<(), FormatError> {
    let detail = if name.is_empty() {
        "empty entry name"
    } else if name == b"." || name == b".." {
        "entry name is . or .."
    } else if name.contains(&b'/') {
        "entry name contains /"
    } else if name.contains(&0) {
        "entry name contains NUL"
    } else if name.len() > MAX_NAME_LEN {
        "entry name longer than 255 bytes"
    } else {
        return Ok(());
    };
    Err(FormatError::malformed(
        WHAT,
        format!("{detail}: {:?}", String::from_utf8_lossy(name)),
    ))
}

impl Tree {
    /// Encodes with the object header. Entries must already be sorted (see [`Tree::sort`]).
    pub fn encode(&self) -> Vec<u8> {
        envelope::encode(Kind::Tree, self)
    }

    /// Sorts entries by name.
    pub fn sort(&mut self) {
        self.entries.sort_by(|a, b| a.name.cmp(&b.name));
    }

    /// Decodes and validates.
    ///
    /// # Errors
    /// Any [`FormatError`]: bad header, undecodable body, unsafe or unsorted or duplicate names,
    /// extents that do not add up to the file size, zero-length extents, invalid times.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let tree: Tree = envelope::decode(Kind::Tree, bytes)?;
        tree.validate()?;
        Ok(tree)
    }

    /// Checks the rules [`Tree::decode`] enforces.
    ///
    /// # Errors
    /// As [`Tree::decode`].
    pub fn validate(&self) -> Result<(), FormatError> {
        let mut prev: Option<&[u8]> = None;
        for e in &self.entries {
            validate_name(&e.name)?;
            if let Some(p) = prev {
                if p >= e.name.as_slice() {
                    return Err(FormatError::malformed(
                        WHAT,
                        format!(
                            "entries not strictly sorted at {:?}",
                            String::from_utf8_lossy(&e.name)
                        ),
                    ));
                }
            }
            prev = Some(&e.name);
            if !e.meta.mtime.is_valid() {
                return Err(FormatError::malformed(WHAT, "mtime nanoseconds out of range"));
            }
            match &e.node {
                Node::File { size, extents, .. } => {
                    let mut total: u64 = 0;
                    for x in extents {
                        if x.is_empty() {
                            return Err(FormatError::malformed(WHAT, "zero-length extent"));
                        }
                        total = total
                            .checked_add(x.len())
                            .ok_or_else(|| FormatError::malformed(WHAT, "file size overflows"))?;
                    }
                    if total != *size {
                        return Err(FormatError::malformed(
                            WHAT,
                            format!(
                                "extents of {:?} add up to {total}, size says {size}",
                                String::from_utf8_lossy(&e.name)
                            ),
                        ));
                    }
                }
                Node::Symlink { target } => {
                    if target.is_empty() || target.contains(&0) {
                        return Err(FormatError::malformed(
                            WHAT,
                            "symlink target empty or contains NUL",
                        ));
                    }
                }
                Node::Dir { .. } | Node::Fifo | Node::CharDevice { .. } | Node::BlockDevice { .. } => {}
            }
        }
        Ok(())
    }
}

/// Serializes `Vec<u8>` as one byte string (same wire bytes as a sequence of u8 in postcard, but
/// without a per-byte call).
mod serde_bytes_vec {
    use serde::de::{Deserializer, Error, SeqAccess, Visitor};
    use serde::Serializer;
    use std::fmt;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_bytes(V)
    }
}
