//! What to do with a body that got no clean/infected answer: the admin's
//! choice between failing closed and failing open, per kind of failure.

use serde::{Deserialize, Serialize};

use crate::verdict::ErrorKind;

/// Block or allow.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Refuse the body (fail closed).
    Block,
    /// Deliver it unscanned (fail open).
    Allow,
}

/// `on_error`, `on_oversize` and `undecodable`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Scanner errors (down, busy, timeouts, garbage, spool failures).
    pub on_error: Action,
    /// Bodies over `max_scan_size`, `max_decoded_size` or the scanner's
    /// own limit.
    pub on_oversize: Action,
    /// Bodies whose Content-Encoding cannot be undone for the scanner.
    pub undecodable: Action,
}

impl Default for Policy {
    fn default() -> Self {
        Policy { on_error: Action::Block, on_oversize: Action::Block, undecodable: Action::Block }
    }
}

impl Policy {
    /// The action for a scan that failed with `kind`.
    pub fn action(&self, kind: ErrorKind) -> Action {
        match kind {
            ErrorKind::Oversize => self.on_oversize,
            ErrorKind::Undecodable => self.undecodable,
            // A body that could not be held cannot be delivered either way.
            ErrorKind::Spool => Action::Block,
            ErrorKind::Unavailable | ErrorKind::Busy | ErrorKind::Timeout | ErrorKind::Protocol | ErrorKind::Io => {
                self.on_error
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_has_its_setting() {
        let p = Policy { on_error: Action::Allow, on_oversize: Action::Block, undecodable: Action::Allow };
        assert_eq!(p.action(ErrorKind::Unavailable), Action::Allow);
        assert_eq!(p.action(ErrorKind::Busy), Action::Allow);
        assert_eq!(p.action(ErrorKind::Oversize), Action::Block);
        assert_eq!(p.action(ErrorKind::Undecodable), Action::Allow);
        assert_eq!(p.action(ErrorKind::Spool), Action::Block, "an unheld body is never delivered");
    }
}
