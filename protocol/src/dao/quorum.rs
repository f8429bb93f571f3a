//! The approval stage of every DAO request (a signature, a policy change): the approvals and
//! rejections of one request by the members a rule names, absorbed in any order, each checked
//! against the approver's key and against what it must approve. The provider's signing
//! [`super::sign::Coordinator`], its policy change and a member's [`super::sign::Tally`] all count
//! with this one state machine; only what they do once it is reached differs.
//!
//! A member's first word stands: an approval after its own rejection (or the reverse) is refused,
//! so nobody can flip a tally back and forth. The same message twice changes nothing.

use std::collections::BTreeMap;

use super::{Approval, DaoMessage, MAX_REJECTION_REASON, Rejection};
use crate::error::{ProtocolError, Result};
use crate::id::PartyId;

/// The approvals and rejections of one request.
#[derive(Debug, Clone)]
pub struct Quorum {
    request: [u8; 32],
    /// Member parties whose approval counts, with their keys.
    approvers: BTreeMap<PartyId, Vec<u8>>,
    needed: u16,
    /// What an approval must carry in `sighashes` (`super::sighashes_digest` of a signing
    /// request, `PolicyChange::approval_digest` of a policy change).
    digest: [u8; 32],
    /// Approving parties in arrival order.
    approvals: Vec<PartyId>,
    /// Rejecting parties, with the reason each gave.
    rejections: BTreeMap<PartyId, Option<String>>,
}

impl Quorum {
    /// A quorum of `needed` approvals among `approvers` (member party → device key) for
    /// `request` (its hash), each approving `digest`.
    ///
    /// Errors: no approval needed, or more than there are approvers ([`ProtocolError::Params`]).
    pub fn new(
        request: [u8; 32],
        approvers: BTreeMap<PartyId, Vec<u8>>,
        needed: u16,
        digest: [u8; 32],
    ) -> Result<Self> {
        if needed == 0 || usize::from(needed) > approvers.len() {
            return Err(ProtocolError::Params {
                reason: format!(
                    "the rule needs {needed} approvals among {} approvers",
                    approvers.len()
                ),
            });
        }
        Ok(Self {
            request,
            approvers,
            needed,
            digest,
            approvals: Vec::new(),
            rejections: BTreeMap::new(),
        })
    }

    /// Takes one verified message from `sender` (the key that signed its envelope): an approval
    /// or a rejection of this request; anything else is not for the quorum (`Ok(false)`).
    /// Returns whether the tally changed.
    ///
    /// Errors (the message is refused, the request goes on; [`ProtocolError::Culprit`]): it is
    /// for another request or approves something else, its sender is not the approver it names,
    /// the approver already said the opposite, or a rejection's reason is too long.
    pub fn absorb(&mut self, sender: &[u8], message: &DaoMessage) -> Result<bool> {
        match message {
            DaoMessage::Approval(a) => self.approval(sender, a),
            DaoMessage::Reject(r) => self.rejection(sender, r),
            _ => Ok(false),
        }
    }

    fn approval(&mut self, sender: &[u8], a: &Approval) -> Result<bool> {
        self.check_vote(sender, a.party, &a.request, "approval")?;
        if a.sighashes.as_slice() != self.digest {
            return Err(ProtocolError::culprit(
                a.party,
                "it approved something other than this request",
            ));
        }
        if !self.first_word(a.party, true)? {
            return Ok(false);
        }
        self.approvals.push(a.party);
        Ok(true)
    }

    fn rejection(&mut self, sender: &[u8], r: &Rejection) -> Result<bool> {
        self.check_vote(sender, r.party, &r.request, "rejection")?;
        if let Some(text) = r.reason.as_ref().filter(|t| t.len() > MAX_REJECTION_REASON) {
            return Err(ProtocolError::culprit(
                r.party,
                format!(
                    "its rejection's reason is {} bytes, at most {MAX_REJECTION_REASON}",
                    text.len()
                ),
            ));
        }
        if !self.first_word(r.party, false)? {
            return Ok(false);
        }
        self.rejections.insert(r.party, r.reason.clone());
        Ok(true)
    }

    /// Whether `party`'s approval (`approving`) or rejection is its first word: `Ok(false)` for
    /// the same word again; an error for the other one (the first word stands).
    fn first_word(&self, party: PartyId, approving: bool) -> Result<bool> {
        let (approved, rejected) = (
            self.approvals.contains(&party),
            self.rejections.contains_key(&party),
        );
        let (again, contrary, why) = if approving {
            let why = "it approved a request it had rejected (the rejection stands)";
            (approved, rejected, why)
        } else {
            let why = "it rejected a request it had approved (the approval stands)";
            (rejected, approved, why)
        };
        if contrary {
            return Err(ProtocolError::culprit(party, why));
        }
        Ok(!again)
    }

    /// An approval or a rejection (`what`) by `party`: for this request, and signed by that
    /// approver's key.
    fn check_vote(&self, sender: &[u8], party: PartyId, request: &[u8], what: &str) -> Result<()> {
        if request != self.request.as_slice() {
            return Err(ProtocolError::culprit(
                party,
                format!("its {what} is for another request"),
            ));
        }
        self.check_member(sender, party, what)
    }

    /// `sender` must be the key of approver `party`.
    ///
    /// Errors: `party` is no approver under this rule, or `sender` is not its key
    /// ([`ProtocolError::Culprit`]).
    pub fn check_member(&self, sender: &[u8], party: PartyId, what: &str) -> Result<()> {
        match self.approvers.get(&party) {
            Some(key) if key.as_slice() == sender => Ok(()),
            Some(_) => Err(ProtocolError::culprit(
                party,
                format!("its {what} was signed by another key"),
            )),
            None => Err(ProtocolError::culprit(
                party,
                format!("sent a {what} but is not an approver under this rule"),
            )),
        }
    }

    /// Whether `party` is an approver under this rule.
    pub fn is_approver(&self, party: PartyId) -> bool {
        self.approvers.contains_key(&party)
    }

    /// How many approvers the rule names.
    pub fn approver_count(&self) -> usize {
        self.approvers.len()
    }

    /// Approving parties, in arrival order.
    pub fn approvals(&self) -> &[PartyId] {
        &self.approvals
    }

    /// Rejecting parties, with their reasons.
    pub fn rejections(&self) -> &BTreeMap<PartyId, Option<String>> {
        &self.rejections
    }

    /// Approvals the rule needs.
    pub fn needed(&self) -> u16 {
        self.needed
    }

    /// Whether enough approvals are in.
    pub fn is_reached(&self) -> bool {
        self.approvals.len() >= usize::from(self.needed)
    }

    /// Whether the rule's approvals can no longer be reached: the approvers that did not reject
    /// are fewer than it needs.
    pub fn is_dead(&self) -> bool {
        !self.is_reached()
            && self.approvers.len().saturating_sub(self.rejections.len()) < usize::from(self.needed)
    }

    /// Approvers the quorum still waits for (neither approved nor rejected); empty once reached
    /// or dead.
    pub fn missing(&self) -> Vec<PartyId> {
        if self.is_reached() || self.is_dead() {
            return Vec::new();
        }
        self.approvers
            .keys()
            .copied()
            .filter(|p| !self.approvals.contains(p) && !self.rejections.contains_key(p))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_bytes::ByteBuf;

    use super::*;
    use crate::id::pid;

    const REQUEST: [u8; 32] = [9; 32];
    const DIGEST: [u8; 32] = [8; 32];

    fn key(n: u16) -> Vec<u8> {
        vec![u8::try_from(n).unwrap(); 33]
    }

    /// Two of parties 1..=3.
    fn quorum() -> Quorum {
        let approvers = (1..=3).map(|n| (pid(n), key(n))).collect();
        Quorum::new(REQUEST, approvers, 2, DIGEST).unwrap()
    }

    fn approval(n: u16, digest: [u8; 32]) -> DaoMessage {
        DaoMessage::Approval(Approval {
            request: ByteBuf::from(REQUEST.to_vec()),
            party: pid(n),
            sighashes: ByteBuf::from(digest.to_vec()),
        })
    }

    fn rejection(n: u16, reason: Option<String>) -> DaoMessage {
        DaoMessage::Reject(Rejection {
            request: ByteBuf::from(REQUEST.to_vec()),
            party: pid(n),
            reason,
        })
    }

    fn culprit(r: Result<bool>) -> Option<PartyId> {
        match r {
            Err(ProtocolError::Culprit { party, .. }) => Some(party),
            _ => None,
        }
    }

    #[test]
    fn approvals_in_any_order_reach_it_once_and_say_who_is_missing() {
        let mut q = quorum();
        assert_eq!(q.missing(), vec![pid(1), pid(2), pid(3)]);
        assert!(q.absorb(&key(3), &approval(3, DIGEST)).unwrap());
        assert!(!q.absorb(&key(3), &approval(3, DIGEST)).unwrap());
        assert_eq!(q.missing(), vec![pid(1), pid(2)]);
        assert!(!q.is_reached());
        assert!(q.absorb(&key(1), &approval(1, DIGEST)).unwrap());
        assert!(q.is_reached());
        assert_eq!(q.approvals(), &[pid(3), pid(1)]);
        assert!(q.missing().is_empty());
    }

    #[test]
    fn refused_messages_name_their_sender_and_change_nothing() {
        let mut q = quorum();
        // Another approver's key, a stranger, another digest, another request.
        assert_eq!(
            culprit(q.absorb(&key(2), &approval(1, DIGEST))),
            Some(pid(1))
        );
        assert_eq!(
            culprit(q.absorb(&key(4), &approval(4, DIGEST))),
            Some(pid(4))
        );
        assert_eq!(
            culprit(q.absorb(&key(1), &approval(1, [0; 32]))),
            Some(pid(1))
        );
        let mut other = approval(1, DIGEST);
        if let DaoMessage::Approval(a) = &mut other {
            a.request = ByteBuf::from(vec![0; 32]);
        }
        assert_eq!(culprit(q.absorb(&key(1), &other)), Some(pid(1)));
        let long = Some("x".repeat(MAX_REJECTION_REASON + 1));
        assert_eq!(
            culprit(q.absorb(&key(1), &rejection(1, long))),
            Some(pid(1))
        );
        assert!(q.approvals().is_empty() && q.rejections().is_empty());
    }

    #[test]
    fn a_first_word_stands_and_rejections_kill_it_when_too_few_remain() {
        let mut q = quorum();
        assert!(q.absorb(&key(1), &rejection(1, Some("no".into()))).unwrap());
        assert_eq!(
            culprit(q.absorb(&key(1), &approval(1, DIGEST))),
            Some(pid(1))
        );
        assert!(q.absorb(&key(2), &approval(2, DIGEST)).unwrap());
        assert_eq!(
            culprit(q.absorb(&key(2), &rejection(2, None))),
            Some(pid(2))
        );
        assert!(!q.is_dead());
        assert_eq!(q.missing(), vec![pid(3)]);
        assert!(q.absorb(&key(3), &rejection(3, None)).unwrap());
        assert!(q.is_dead());
        assert!(q.missing().is_empty());
    }

    #[test]
    fn a_rule_needing_nothing_or_more_than_its_approvers_is_refused() {
        let approvers: BTreeMap<_, _> = (1..=2).map(|n| (pid(n), key(n))).collect();
        assert!(Quorum::new(REQUEST, approvers.clone(), 0, DIGEST).is_err());
        assert!(Quorum::new(REQUEST, approvers, 3, DIGEST).is_err());
    }
}
