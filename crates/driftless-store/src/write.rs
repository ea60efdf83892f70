//! What a repair asks of a stage copy: conditional writes.
//!
//! Every [`WriteOp`] carries what the stage held for its key when the divergence was
//! detected ([`WriteOp::seen`]: the aggregate of every stage row with that key, `(0, 0)` for
//! none). A store applies an op only if the key's rows still aggregate to exactly that,
//! checked in the same transaction as the write, so a newer write by someone else is never
//! clobbered; otherwise it reports what the key holds now ([`WriteResult::Changed`]) and
//! writes nothing for it.

use driftless_core::{Aggregate, Key, Value};

use crate::object::SourceRef;

/// One conditional write.
#[derive(Clone, Debug, PartialEq)]
pub struct WriteOp {
    /// The key written.
    pub key: Key,
    /// The stage's rows of this key at detection.
    pub seen: Aggregate,
    /// What to do when the stage still holds `seen`.
    pub action: WriteAction,
}

/// What a write does.
#[derive(Clone, Debug, PartialEq)]
pub enum WriteAction {
    /// Leave exactly one row with this key, holding `values` for the write columns
    /// (key columns first, as [`crate::Schema`] orders them): an insert when the stage has
    /// no row, an update of the row when it has one, and a delete and insert when it has
    /// several.
    Put(Vec<Value>),
    /// Make the object with this key hold the bytes the source (canonical) holds for it
    /// now, streamed or copied server-side; an object store's form of `Put`.
    PutObject(SourceRef),
    /// Remove every row with this key.
    Delete,
    /// Run a user's compensating statement, written with the store's own placeholders
    /// ([`crate::Store::placeholder`]), with these values bound in order.
    Statement {
        /// The statement.
        sql: String,
        /// Values for its placeholders.
        binds: Vec<Value>,
    },
}

impl WriteAction {
    /// `put`, `delete` or `compensate`, as the ledger records it.
    pub fn name(&self) -> &'static str {
        match self {
            WriteAction::Put(_) | WriteAction::PutObject(_) => "put",
            WriteAction::Delete => "delete",
            WriteAction::Statement { .. } => "compensate",
        }
    }
}

/// How one op ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteResult {
    /// The stage held what was seen; the write was made.
    Applied,
    /// The stage no longer held what was seen: nothing was written for this key. The
    /// aggregate is what its rows hold now.
    Changed(Aggregate),
    /// This op's write failed (a constraint, a type, the statement); the others in the batch
    /// are unaffected.
    Failed(String),
}
