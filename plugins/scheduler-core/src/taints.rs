//! Taints and tolerations.

use crate::objects::{Taint, Toleration};

/// Effects that keep a pod off a node when not tolerated.
pub(crate) const HARD_EFFECTS: [&str; 2] = ["NoSchedule", "NoExecute"];

/// The taint kept on nodes marked `spec.unschedulable`.
pub(crate) const UNSCHEDULABLE_KEY: &str = "node.kubernetes.io/unschedulable";

/// Whether one toleration tolerates one taint: the effect matches (or the
/// toleration names none), the key matches (or is empty), and the operator
/// is `Exists`, or `Equal` (the default) with the same value.
pub(crate) fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if !t.effect.is_empty() && t.effect != taint.effect {
        return false;
    }
    if !t.key.is_empty() && t.key != taint.key {
        return false;
    }
    match t.operator.as_str() {
        "Exists" => true,
        "" | "Equal" => t.value == taint.value,
        _ => false,
    }
}

/// Whether any of `tolerations` tolerates `taint`.
pub(crate) fn tolerated(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| tolerates(t, taint))
}

/// The first NoSchedule/NoExecute taint that no toleration tolerates.
pub(crate) fn first_untolerated_hard<'a>(
    taints: &'a [Taint],
    tolerations: &[Toleration],
) -> Option<&'a Taint> {
    taints
        .iter()
        .filter(|t| HARD_EFFECTS.contains(&t.effect.as_str()))
        .find(|t| !tolerated(tolerations, t))
}

/// How many PreferNoSchedule taints the pod does not tolerate. Only
/// tolerations with no effect or PreferNoSchedule count, as in Kubernetes.
pub(crate) fn untolerated_soft(taints: &[Taint], tolerations: &[Toleration]) -> u64 {
    let soft: Vec<&Toleration> = tolerations
        .iter()
        .filter(|t| t.effect.is_empty() || t.effect == "PreferNoSchedule")
        .collect();
    taints
        .iter()
        .filter(|t| t.effect == "PreferNoSchedule")
        .filter(|taint| !soft.iter().any(|t| tolerates(t, taint)))
        .count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str, value: &str, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            value: value.into(),
            effect: effect.into(),
        }
    }

    fn tol(key: &str, op: &str, value: &str, effect: &str) -> Toleration {
        Toleration {
            key: key.into(),
            operator: op.into(),
            value: value.into(),
            effect: effect.into(),
        }
    }

    #[test]
    fn toleration_matching() {
        let t = taint("gpu", "true", "NoSchedule");
        assert!(tolerates(&tol("gpu", "Equal", "true", "NoSchedule"), &t));
        assert!(
            tolerates(&tol("gpu", "", "true", ""), &t),
            "default operator is Equal"
        );
        assert!(!tolerates(&tol("gpu", "Equal", "false", "NoSchedule"), &t));
        assert!(tolerates(&tol("gpu", "Exists", "", "NoSchedule"), &t));
        assert!(
            !tolerates(&tol("gpu", "Exists", "", "NoExecute"), &t),
            "effect differs"
        );
        assert!(!tolerates(&tol("tpu", "Exists", "", ""), &t));
        assert!(
            tolerates(&tol("", "Exists", "", ""), &t),
            "empty key + Exists tolerates all"
        );
        assert!(
            !tolerates(&tol("gpu", "Gt", "true", ""), &t),
            "unknown operator"
        );
    }

    #[test]
    fn hard_and_soft_taints() {
        let taints = [
            taint("a", "1", "PreferNoSchedule"),
            taint("b", "2", "NoSchedule"),
            taint("c", "3", "NoExecute"),
        ];
        assert_eq!(first_untolerated_hard(&taints, &[]).unwrap().key, "b");
        let tols = [tol("b", "Exists", "", "")];
        assert_eq!(first_untolerated_hard(&taints, &tols).unwrap().key, "c");
        let all = [tol("", "Exists", "", "")];
        assert!(first_untolerated_hard(&taints, &all).is_none());

        assert_eq!(untolerated_soft(&taints, &[]), 1);
        assert_eq!(
            untolerated_soft(&taints, &[tol("a", "Exists", "", "PreferNoSchedule")]),
            0
        );
        assert_eq!(
            untolerated_soft(&taints, &[tol("a", "Exists", "", "NoSchedule")]),
            1,
            "a NoSchedule toleration does not count for scoring"
        );
    }
}
