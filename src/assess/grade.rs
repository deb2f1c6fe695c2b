//! Scoring, grades and the settings verdicts: pure functions, no I/O.
//!
//! The course's rules (docs/lab.md): a scenario scores `passed / total x weight`;
//! the grade comes from the percentage of the maximum (A >= 90, B >= 80,
//! C >= 70, D >= 60, else F); the cost is `(1 + followers) x per_node_cost`
//! (the leader is a node too); a justification counts when it is non-empty
//! and has no "TODO"; W + R > N is what makes reads never stale.

use serde::Serialize;

use super::scenario::CostModel;

/// The justifications the student config asks for, in the card's order.
pub const JUSTIFICATIONS: [&str; 4] = [
    "quorum_choice",
    "follower_count",
    "rate_limiting",
    "auto_spawn",
];

/// A scenario's points: `passed / total x weight` (0 for an empty scenario).
pub fn scenario_score(passed: usize, total: usize, weight: f64) -> f64 {
    if total == 0 {
        return 0.0;
    }
    passed as f64 / total as f64 * weight
}

/// Percentage of the maximum (0 when nothing could be scored).
pub fn percent(score: f64, max: f64) -> f64 {
    if max <= 0.0 {
        return 0.0;
    }
    score / max * 100.0
}

/// The letter for a percentage. A hair of rounding slack, so 89.99999 from
/// summing thirds is still an A's 90.
pub fn letter(percent: f64) -> char {
    let p = percent + 1e-9;
    match p {
        p if p >= 90.0 => 'A',
        p if p >= 80.0 => 'B',
        p if p >= 70.0 => 'C',
        p if p >= 60.0 => 'D',
        _ => 'F',
    }
}

/// What the deployment costs per hour, against the budget.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Cost {
    pub nodes: usize,
    pub per_hour: f64,
    pub budget: f64,
    pub within_budget: bool,
}

pub fn cost(followers: usize, model: CostModel) -> Cost {
    let nodes = 1 + followers;
    let per_hour = nodes as f64 * model.per_node_cost;
    Cost {
        nodes,
        per_hour,
        budget: model.budget_limit,
        within_budget: per_hour <= model.budget_limit,
    }
}

/// Whether a justification is written: non-empty and no "TODO" left in it.
pub fn is_filled(text: Option<&str>) -> bool {
    text.is_some_and(|t| !t.trim().is_empty() && !t.contains("TODO"))
}

/// W + R against N, and what it means for reads.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Consistency {
    pub w: usize,
    pub r: usize,
    pub n: usize,
    pub sum: usize,
    /// W + R > N: every read set overlaps the last write's sync set.
    pub strong: bool,
}

pub fn consistency(w: usize, r: usize, n: usize) -> Consistency {
    Consistency {
        w,
        r,
        n,
        sum: w + r,
        strong: w + r > n,
    }
}

impl Consistency {
    pub fn verdict(&self) -> String {
        if self.strong {
            format!(
                "W + R = {} > N = {}: every read asks at least one follower that acknowledged the latest write, so no read is stale",
                self.sum, self.n
            )
        } else {
            format!(
                "W + R = {} <= N = {}: a read can ask only followers the latest write has not reached yet, so stale reads are possible",
                self.sum, self.n
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_broken_score_is_37_and_an_f() {
        // INC-0 2/4: both reads miss (see labs/cloudcart/instructor/README.md
        // for why the original's own run reached 3/4 and 42).
        let total = scenario_score(2, 4, 20.0)
            + scenario_score(0, 1, 20.0)
            + scenario_score(1, 2, 30.0)
            + scenario_score(2, 5, 30.0);
        assert!((total - 37.0).abs() < 1e-9);
        assert_eq!(letter(percent(total, 100.0)), 'F');
    }

    #[test]
    fn grade_boundaries() {
        assert_eq!(letter(100.0), 'A');
        assert_eq!(letter(90.0), 'A');
        assert_eq!(letter(89.99999999999), 'A');
        assert_eq!(letter(89.9), 'B');
        assert_eq!(letter(80.0), 'B');
        assert_eq!(letter(70.0), 'C');
        assert_eq!(letter(60.0), 'D');
        assert_eq!(letter(59.9), 'F');
        assert_eq!(letter(0.0), 'F');
    }

    #[test]
    fn percentages_of_any_maximum() {
        assert_eq!(percent(60.0, 120.0), 50.0);
        assert_eq!(percent(0.0, 0.0), 0.0);
        assert_eq!(scenario_score(0, 0, 10.0), 0.0);
        assert!((scenario_score(1, 3, 30.0) - 10.0).abs() < 1e-9);
    }

    #[test]
    fn cost_counts_the_leader() {
        let model = CostModel::default();
        let broken = cost(5, model);
        assert_eq!((broken.nodes, broken.per_hour), (6, 60.0));
        assert!(!broken.within_budget);
        let good = cost(3, model);
        assert_eq!(good.per_hour, 40.0);
        assert!(good.within_budget);
        assert!(
            cost(4, model).within_budget,
            "exactly the budget is within it"
        );
    }

    #[test]
    fn justifications_need_words_and_no_todo() {
        assert!(!is_filled(None));
        assert!(!is_filled(Some("  ")));
        assert!(!is_filled(Some("TODO: explain")));
        assert!(!is_filled(Some("mostly done, TODO the numbers")));
        assert!(is_filled(Some("W=2 and R=2 overlap on 3 followers")));
    }

    #[test]
    fn w_plus_r_against_n() {
        assert!(!consistency(4, 1, 5).strong);
        assert!(consistency(2, 2, 3).strong);
        assert!(!consistency(2, 1, 3).strong);
        assert!(consistency(2, 2, 3).verdict().contains("no read is stale"));
        assert!(consistency(4, 1, 5)
            .verdict()
            .contains("stale reads are possible"));
    }
}
