//! The static work bound of a Biscuit's Datalog, computed before any of it
//! runs.
//!
//! Design points:
//! - **Why static.** The Biscuit engine checks its run limits (time, facts,
//!   iterations) only between rule iterations, and it cannot interrupt one
//!   expression. A single rule, check or expression can therefore run for
//!   seconds inside one iteration, whatever `max_time_ms` says. Every token
//!   is costed here first and refused when its bound exceeds `max_work`.
//! - **Joins.** A rule body or check query visits, for each prefix of its
//!   predicates, the product of the facts those predicates can match. The
//!   bound is the sum over prefixes, so a predicate with no facts late in a
//!   body does not hide the join before it. A derived predicate counts as
//!   `max_facts`; rules run up to `max_iterations` times.
//! - **Expressions.** They run once per complete match. Each operation
//!   costs 1. A closure with parameters (`.all`, `.any`) runs its body once
//!   per element, so it costs its body times the most elements any
//!   collection in the token can have: nested closures multiply. A closure
//!   without parameters (lazy `&&`, `||`) runs its body at most once.
//! - **Regular expressions.** The engine compiles the pattern of `.matches`
//!   on every evaluation, and a short pattern can take 100 ms to compile
//!   (`\w{1000}`). So a pattern must be a string literal, a token has at
//!   most [`MAX_PATTERNS`] distinct patterns, each must compile within
//!   [`PATTERN_SIZE_LIMIT`] bytes, and each evaluation costs
//!   [`REGEX_COST`] (a compile within that limit takes up to ≈ 0.4 ms).
//! - Plain logic over the authorizer's contents; no HTTP types.

use std::collections::{BTreeSet, HashMap};

use biscuit_auth::builder::{Binary, Op, Predicate, Rule, Term};

/// Distinct `.matches` patterns a token may hold.
pub const MAX_PATTERNS: usize = 8;
/// The compiled size a `.matches` pattern may reach (the regex crate's
/// `size_limit`).
pub const PATTERN_SIZE_LIMIT: usize = 64 * 1024;
/// The cost of one `.matches` evaluation, in join steps.
pub const REGEX_COST: u64 = 2_000;

/// The limits the bound is computed with.
#[derive(Debug, Clone, Copy)]
pub struct WorkLimits {
    pub max_facts: u64,
    pub max_iterations: u64,
    pub max_work: u64,
}

/// Why a token's Datalog is refused before it runs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkError {
    #[error("the Biscuit's rules and checks could take {0} steps; at most {1} are allowed")]
    TooMuch(u64, u64),
    #[error("the Biscuit's rules cannot be read")]
    Unreadable,
    #[error(".matches takes a string literal as its pattern")]
    PatternNotLiteral,
    #[error("the Biscuit has more than {MAX_PATTERNS} distinct .matches patterns")]
    TooManyPatterns,
    #[error(".matches pattern {0:?} is not a valid pattern of at most {PATTERN_SIZE_LIMIT} compiled bytes")]
    BadPattern(String),
}

/// Checks the Datalog `authorizer` holds (the token's blocks and the
/// authorizer's own facts, rules, checks and policies) against `limits`.
pub fn check(authorizer: &biscuit_auth::Authorizer, limits: WorkLimits) -> Result<u64, WorkError> {
    let (facts, rules, checks, policies) =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| authorizer.dump()))
            .map_err(|_| WorkError::Unreadable)?;
    let queries: Vec<&Rule> = checks
        .iter()
        .flat_map(|c| c.queries.iter())
        .chain(policies.iter().flat_map(|p| p.queries.iter()))
        .collect();
    let facts: Vec<&Predicate> = facts.iter().map(|f| &f.predicate).collect();
    let rules: Vec<&Rule> = rules.iter().collect();
    patterns(rules.iter().chain(queries.iter()).copied())?;
    let work = bound(&facts, &rules, &queries, limits);
    if work > limits.max_work {
        return Err(WorkError::TooMuch(work, limits.max_work));
    }
    Ok(work)
}

/// The work bound of these facts, rules and queries (checks and policies).
fn bound(facts: &[&Predicate], rules: &[&Rule], queries: &[&Rule], limits: WorkLimits) -> u64 {
    let mut counts: HashMap<&str, u64> = HashMap::new();
    for f in facts {
        *counts.entry(f.name.as_str()).or_default() += 1;
    }
    for r in rules {
        counts.insert(r.head.name.as_str(), limits.max_facts);
    }
    let elements = 1 + facts
        .iter()
        .flat_map(|p| p.terms.iter())
        .chain(
            rules
                .iter()
                .chain(queries)
                .flat_map(|r| rule_terms(r).into_iter()),
        )
        .map(collection_elements)
        .fold(0u64, u64::saturating_add);
    let cost = |r: &Rule| -> u64 {
        let mut matches = 1u64;
        let mut visited = 0u64;
        for p in &r.body {
            matches = matches.saturating_mul(counts.get(p.name.as_str()).copied().unwrap_or(0));
            visited = visited.saturating_add(matches);
        }
        let per_match = r
            .expressions
            .iter()
            .map(|e| ops_cost(&e.ops, elements))
            .fold(0u64, u64::saturating_add);
        visited.saturating_add(matches.saturating_mul(per_match))
    };
    let rules_work = rules
        .iter()
        .map(|r| cost(r))
        .fold(0u64, u64::saturating_add)
        .saturating_mul(limits.max_iterations);
    let queries_work = queries
        .iter()
        .map(|r| cost(r))
        .fold(0u64, u64::saturating_add);
    rules_work.saturating_add(queries_work)
}

/// One evaluation of these operations.
fn ops_cost(ops: &[Op], elements: u64) -> u64 {
    ops.iter()
        .map(|op| match op {
            Op::Binary(Binary::Regex) => REGEX_COST,
            Op::Closure(params, body) if params.is_empty() => ops_cost(body, elements),
            Op::Closure(_, body) => elements.saturating_mul(ops_cost(body, elements)),
            _ => 1,
        })
        .fold(0u64, u64::saturating_add)
}

/// Every term a rule holds: its head's, its body's and its expressions'
/// values (closures included).
fn rule_terms(r: &Rule) -> Vec<&Term> {
    fn values<'a>(ops: &'a [Op], out: &mut Vec<&'a Term>) {
        for op in ops {
            match op {
                Op::Value(t) => out.push(t),
                Op::Closure(_, body) => values(body, out),
                _ => {}
            }
        }
    }
    let mut out: Vec<&Term> = r
        .head
        .terms
        .iter()
        .chain(r.body.iter().flat_map(|p| p.terms.iter()))
        .collect();
    for e in &r.expressions {
        values(&e.ops, &mut out);
    }
    out
}

/// How many elements a term's collections hold, nested ones included: no
/// collection an expression can build (a union at most joins them) has
/// more than the sum over the token.
fn collection_elements(t: &Term) -> u64 {
    match t {
        Term::Set(s) => s
            .iter()
            .map(|e| 1 + collection_elements(e))
            .fold(0u64, u64::saturating_add),
        Term::Array(a) => a
            .iter()
            .map(|e| 1 + collection_elements(e))
            .fold(0u64, u64::saturating_add),
        Term::Map(m) => m
            .values()
            .map(|e| 1 + collection_elements(e))
            .fold(0u64, u64::saturating_add),
        _ => 0,
    }
}

/// The `.matches` patterns of these rules: literals, few, each bounded.
fn patterns<'a>(rules: impl Iterator<Item = &'a Rule>) -> Result<(), WorkError> {
    fn collect<'a>(ops: &'a [Op], out: &mut BTreeSet<&'a str>) -> Result<(), WorkError> {
        for (i, op) in ops.iter().enumerate() {
            match op {
                Op::Binary(Binary::Regex) => match i.checked_sub(1).map(|j| &ops[j]) {
                    Some(Op::Value(Term::Str(p))) => {
                        out.insert(p.as_str());
                        if out.len() > MAX_PATTERNS {
                            return Err(WorkError::TooManyPatterns);
                        }
                    }
                    _ => return Err(WorkError::PatternNotLiteral),
                },
                Op::Closure(_, body) => collect(body, out)?,
                _ => {}
            }
        }
        Ok(())
    }
    let mut found = BTreeSet::new();
    for r in rules {
        for e in &r.expressions {
            collect(&e.ops, &mut found)?;
        }
    }
    for p in found {
        regex::RegexBuilder::new(p)
            .size_limit(PATTERN_SIZE_LIMIT)
            .build()
            .map_err(|_| WorkError::BadPattern(crate::clip(p, 64).to_owned()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use biscuit_auth::AuthorizerBuilder;

    const LIMITS: WorkLimits = WorkLimits {
        max_facts: 1000,
        max_iterations: 100,
        max_work: 100_000,
    };

    fn run(code: &str) -> Result<u64, WorkError> {
        let a = AuthorizerBuilder::new()
            .code(code)
            .unwrap()
            .build_unauthenticated()
            .unwrap();
        check(&a, LIMITS)
    }

    fn facts(name: &str, n: usize) -> String {
        (0..n).map(|i| format!("{name}({i}); ")).collect()
    }

    #[test]
    fn joins_cost_every_prefix_so_an_empty_predicate_hides_nothing() {
        // 60 × 60 × 60 rows are visited before the empty predicate.
        let code = format!("{} check if n($a), n($b), n($c), none($d);", facts("n", 60));
        assert_eq!(
            run(&code),
            Err(WorkError::TooMuch(60 + 3600 + 216_000, 100_000))
        );
        // Two predicates over 60 facts: 60 + 3600 rows, then one comparison per match.
        let code = format!("{} check if n($a), n($b), $a == $b;", facts("n", 60));
        assert_eq!(run(&code), Ok(60 + 3600 + 3600 * 3));
        // A derived predicate counts as max_facts, rules run max_iterations times.
        let code = format!("{} p($x) <- n($x); check if p(1);", facts("n", 10));
        assert_eq!(run(&code), Ok(10 * 100 + 1000));
    }

    #[test]
    fn nested_closures_multiply_by_the_token_s_elements() {
        let set: Vec<String> = (0..100).map(|i| i.to_string()).collect();
        let s = format!("s([{}]);", set.join(", "));
        let one = format!("{s} check if s($s), $s.all($x -> $x >= 0);");
        let cost = run(&one).unwrap();
        assert!(cost < 1_000, "{cost}");
        let four = format!(
            "{s} check if s($s), $s.all($a -> $s.all($b -> $s.all($c -> $s.all($d -> true))));"
        );
        assert!(
            matches!(run(&four), Err(WorkError::TooMuch(..))),
            "{:?}",
            run(&four)
        );
        // In a rule body too (rules run before any check).
        let rule = format!("{s} r(1) <- s($s), $s.any($a -> $s.any($b -> $s.any($c -> $a == $b + $c))); check if r(1);");
        assert!(matches!(run(&rule), Err(WorkError::TooMuch(..))));
        // Lazy && and || run their right side once: no multiplication.
        let lazy = "check if true && (true && (true && (true && true)));";
        assert!(run(lazy).unwrap() < 100);
    }

    #[test]
    fn patterns_are_literal_few_and_small() {
        let ok = "check if \"/api/contacts/42\".matches(\"^/api/contacts/[0-9]+$\");";
        assert_eq!(run(ok), Ok(2 + REGEX_COST));
        let big = "check if \"x\".matches(\"\\\\w{1000}\");";
        assert!(
            matches!(run(big), Err(WorkError::BadPattern(_))),
            "{:?}",
            run(big)
        );
        let variable = "p(\"a+\"); check if p($p), \"aaa\".matches($p);";
        assert_eq!(run(variable), Err(WorkError::PatternNotLiteral));
        let many: String = (0..9)
            .map(|i| format!("check if \"a\".matches(\"a{{{i}}}\");"))
            .collect();
        assert_eq!(run(&many), Err(WorkError::TooManyPatterns));
        // Each evaluation costs REGEX_COST: 60 matches are over the bound.
        let joined = format!("{} check if n($x), \"a\".matches(\"a\");", facts("n", 60));
        assert!(matches!(run(&joined), Err(WorkError::TooMuch(..))));
    }
}
