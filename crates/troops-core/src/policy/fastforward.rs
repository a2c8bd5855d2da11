//! Where fast-forward is decided (pull). Pure logic over remote tips and the "descends from"
//! relation, so the rules of the SPEC read as code: a remote tip is a candidate only if it
//! descends from the local tip; the branch moves only to a candidate that descends from every
//! other candidate; forked candidates move nothing.

use git2::Oid;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The remote is behind the local tip (a lagging mirror, or older history pushed there).
    Behind,
    /// Neither descends from the other: a force-push or rewritten history.
    Diverged,
    /// Its signature (or, with `scope = "all"`, one of the commits under it) is refused, with
    /// the reason. Checked before deciding (`verify`), so such a tip never reaches `decide`.
    Unverified(String),
}

/// A remote's fetched branch tip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteTip {
    pub remote: String,
    pub tip: Oid,
}

/// Where the branch moves: a commit, and the remotes that offered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advance {
    pub to: Oid,
    pub remotes: Vec<String>,
}

/// A remote whose tip is no candidate, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub remote: String,
    pub tip: Oid,
    pub refusal: Refusal,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    pub advance: Option<Advance>,
    /// Remotes whose candidates fork from one another (nothing moves then).
    pub conflict: Vec<String>,
    pub refused: Vec<Refused>,
    /// The remotes whose history forked from the local branch, when no remote that answered is
    /// at the local tip or ahead of it: the node is diverged from its remotes (a force-pushed
    /// mirror), and only a person can say which history is right.
    pub diverged: Vec<String>,
}

/// Decides for `local` given each remote's fetched tip; `descends(a, b)` is true when `a` is a
/// strict descendant of `b`.
pub fn decide(local: Option<Oid>, tips: &[RemoteTip], descends: impl Fn(Oid, Oid) -> bool) -> Decision {
    let mut decision = Decision::default();
    // Each tip that may be moved to, with the remotes offering it.
    let mut candidates: Vec<Advance> = Vec::new();
    for RemoteTip { remote, tip } in tips {
        let verdict = match local {
            None => None,
            Some(local) if *tip == local => continue,
            Some(local) if descends(*tip, local) => None,
            Some(local) if descends(local, *tip) => Some(Refusal::Behind),
            Some(_) => Some(Refusal::Diverged),
        };
        match verdict {
            Some(refusal) => decision.refused.push(Refused { remote: remote.clone(), tip: *tip, refusal }),
            None => match candidates.iter_mut().find(|c| c.to == *tip) {
                Some(candidate) => candidate.remotes.push(remote.clone()),
                None => candidates.push(Advance { to: *tip, remotes: vec![remote.clone()] }),
            },
        }
    }
    if candidates.is_empty() && local.is_some_and(|local| tips.iter().all(|t| t.tip != local)) {
        decision.diverged = decision
            .refused
            .iter()
            .filter(|r| r.refusal == Refusal::Diverged)
            .map(|r| r.remote.clone())
            .collect();
    }
    let newest = candidates
        .iter()
        .find(|c| candidates.iter().all(|other| other.to == c.to || descends(c.to, other.to)));
    match newest {
        Some(newest) => decision.advance = Some(newest.clone()),
        None => decision.conflict = candidates.into_iter().flat_map(|c| c.remotes).collect(),
    }
    decision
}

#[cfg(test)]
mod tests {
    use super::*;

    // History: 1 <- 2 <- 3, and 1 <- 4 (a fork).
    fn descends(a: Oid, b: Oid) -> bool {
        let parent = |n: u8| match n {
            2 | 4 => Some(1),
            3 => Some(2),
            _ => None,
        };
        let (mut a, b) = (a.as_bytes()[0], b.as_bytes()[0]);
        while let Some(p) = parent(a) {
            if p == b {
                return true;
            }
            a = p;
        }
        false
    }

    fn c(n: u8) -> Oid {
        Oid::from_bytes(&[n; 20]).unwrap()
    }

    fn tips(list: &[(&str, u8)]) -> Vec<RemoteTip> {
        list.iter().map(|(r, n)| RemoteTip { remote: r.to_string(), tip: c(*n) }).collect()
    }

    fn to(n: u8, remotes: &[&str]) -> Option<Advance> {
        Some(Advance { to: c(n), remotes: remotes.iter().map(|r| r.to_string()).collect() })
    }

    #[test]
    fn moves_to_the_candidate_that_descends_from_all_others() {
        let d = decide(Some(c(1)), &tips(&[("a", 2), ("b", 3), ("c", 3)]), descends);
        assert_eq!(d.advance, to(3, &["b", "c"]));
        assert!(d.conflict.is_empty() && d.refused.is_empty());
    }

    #[test]
    fn an_empty_branch_takes_any_agreeing_tip() {
        assert_eq!(decide(None, &tips(&[("a", 1)]), descends).advance, to(1, &["a"]));
    }

    #[test]
    fn a_branch_no_remote_is_at_or_ahead_of_is_diverged_from_those_that_forked() {
        let names = |d: Decision| d.diverged;
        // The mirror was force-pushed onto another history: the node's branch and it forked.
        assert_eq!(names(decide(Some(c(3)), &tips(&[("a", 4)]), descends)), ["a"]);
        // One forked, one lags behind: still nobody agrees with the node.
        assert_eq!(names(decide(Some(c(3)), &tips(&[("a", 4), ("b", 2)]), descends)), ["a"]);
        // Another remote is at the tip, or ahead of it: the forked one is only a bad remote.
        assert!(names(decide(Some(c(3)), &tips(&[("a", 4), ("b", 3)]), descends)).is_empty());
        assert!(names(decide(Some(c(2)), &tips(&[("a", 4), ("b", 3)]), descends)).is_empty());
        // Only behind, or nothing fetched: not diverged.
        assert!(names(decide(Some(c(3)), &tips(&[("a", 2)]), descends)).is_empty());
        assert!(names(decide(Some(c(3)), &[], descends)).is_empty());
    }

    #[test]
    fn same_tips_move_nothing() {
        assert_eq!(decide(Some(c(3)), &tips(&[("a", 3)]), descends), Decision::default());
    }

    #[test]
    fn rewritten_and_older_tips_are_refused_by_name() {
        let d = decide(Some(c(2)), &tips(&[("old", 1), ("forked", 4), ("good", 3)]), descends);
        assert_eq!(d.advance, to(3, &["good"]));
        assert_eq!(
            d.refused,
            vec![
                Refused { remote: "old".into(), tip: c(1), refusal: Refusal::Behind },
                Refused { remote: "forked".into(), tip: c(4), refusal: Refusal::Diverged }
            ]
        );
    }

    #[test]
    fn forked_candidates_move_nothing_and_name_the_remotes() {
        let d = decide(Some(c(1)), &tips(&[("a", 3), ("b", 4)]), descends);
        assert_eq!(d.advance, None);
        assert_eq!(d.conflict, vec!["a".to_string(), "b".to_string()]);
    }
}
