//! Pod and container from a cgroup path, without the API server.
//!
//! The kubelet names a pod's cgroup after its UID and its QoS class, and the container runtime
//! names each container's cgroup after the container ID. The shapes covered (cgroup v1 or v2,
//! any prefix before `kubepods`, such as kind's `kubelet.slice/kubelet-kubepods.slice`):
//!
//! - systemd driver: `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<UID with
//!   _ for ->.slice/<runtime>-<ID>.scope`, the Guaranteed class one level up
//!   (`kubepods.slice/kubepods-pod<UID>.slice/...`);
//! - cgroupfs driver: `kubepods/burstable/pod<UID>/<ID>`, `kubepods/besteffort/pod<UID>/<ID>`,
//!   `kubepods/pod<UID>/<ID>`;
//! - runtimes: containerd (`cri-containerd-<ID>.scope`), CRI-O (`crio-<ID>.scope`; its
//!   `crio-conmon-<ID>.scope` monitor is not the container), Docker (`docker-<ID>.scope`), and
//!   bare 64-hex IDs under the cgroupfs driver.
use std::fmt;

/// The pod's QoS class, as the kubelet files it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl fmt::Display for QosClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Guaranteed => "Guaranteed",
            Self::Burstable => "Burstable",
            Self::BestEffort => "BestEffort",
        })
    }
}

/// What a cgroup path says about a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodCgroup {
    /// `k8s.pod.uid`, with dashes.
    pub pod_uid: String,
    /// `container.id` (64 hex digits), when the path goes down to a container.
    pub container_id: Option<String>,
    pub qos: QosClass,
}

/// The pod (and container) a cgroup path belongs to; `None` outside `kubepods`.
pub fn parse(path: &str) -> Option<PodCgroup> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let root = parts.iter().position(|p| is_kubepods(p))?;
    let mut qos = QosClass::Guaranteed;
    for (i, part) in parts.iter().enumerate().skip(root) {
        let name = part.strip_suffix(".slice").unwrap_or(part);
        if name.ends_with("burstable") {
            qos = QosClass::Burstable;
        } else if name.ends_with("besteffort") {
            qos = QosClass::BestEffort;
        }
        if let Some(pod_uid) = pod_uid(name) {
            let container_id = parts.get(i + 1).and_then(|c| container_id(c));
            return Some(PodCgroup {
                pod_uid,
                container_id,
                qos,
            });
        }
    }
    None
}

fn is_kubepods(part: &str) -> bool {
    part == "kubepods" || part == "kubepods.slice" || part.ends_with("-kubepods.slice")
}

/// `pod<UID>` (cgroupfs) or `...-pod<UID with _>` (systemd, ".slice" stripped).
fn pod_uid(name: &str) -> Option<String> {
    let raw = if let Some(rest) = name.strip_prefix("pod") {
        rest
    } else {
        let at = name.rfind("-pod")?;
        &name[at + 4..]
    };
    let uid = raw.replace('_', "-");
    is_uid(&uid).then_some(uid)
}

/// A UUID as Kubernetes writes it: 8-4-4-4-12 hex digits.
fn is_uid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn container_id(part: &str) -> Option<String> {
    let name = part.strip_suffix(".scope").unwrap_or(part);
    if name.starts_with("crio-conmon-") {
        return None;
    }
    let id = ["cri-containerd-", "crio-", "docker-", "containerd-", "cri-dockerd-"]
        .iter()
        .find_map(|prefix| name.strip_prefix(prefix))
        .unwrap_or(name);
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "6f1f5a3e-29c4-4d5b-9a0e-7c2b1d3e4f50";
    const ID: &str = "4c2a3f9e8d7b6a5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c";

    fn pod(qos: QosClass, container: bool) -> Option<PodCgroup> {
        Some(PodCgroup {
            pod_uid: UID.into(),
            container_id: container.then(|| ID.into()),
            qos,
        })
    }

    #[test]
    fn systemd_driver_with_each_runtime_and_class() {
        let u = UID.replace('-', "_");
        let cases = [
            (
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{ID}.scope"),
                QosClass::Burstable,
            ),
            (
                format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/crio-{ID}.scope"),
                QosClass::BestEffort,
            ),
            (
                format!("/kubepods.slice/kubepods-pod{u}.slice/docker-{ID}.scope"),
                QosClass::Guaranteed,
            ),
            // kind and other kubelets in a container nest everything under kubelet.slice
            (
                format!(
                    "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{u}.slice/cri-containerd-{ID}.scope"
                ),
                QosClass::BestEffort,
            ),
        ];
        for (path, qos) in cases {
            assert_eq!(parse(&path), pod(qos, true), "{path}");
        }
    }

    #[test]
    fn cgroupfs_driver() {
        for (path, qos) in [
            (format!("/kubepods/burstable/pod{UID}/{ID}"), QosClass::Burstable),
            (format!("/kubepods/besteffort/pod{UID}/{ID}"), QosClass::BestEffort),
            (format!("/kubepods/pod{UID}/{ID}"), QosClass::Guaranteed),
        ] {
            assert_eq!(parse(&path), pod(qos, true), "{path}");
        }
    }

    #[test]
    fn a_pod_level_path_or_a_runtime_monitor_has_no_container() {
        let u = UID.replace('-', "_");
        assert_eq!(
            parse(&format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice"
            )),
            pod(QosClass::Burstable, false)
        );
        assert_eq!(
            parse(&format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/crio-conmon-{ID}.scope"
            )),
            pod(QosClass::Burstable, false)
        );
    }

    #[test]
    fn paths_outside_kubepods_are_not_pods() {
        for path in [
            "/",
            "/system.slice/containerd.service",
            "/user.slice/user-0.slice/session-1.scope",
            &format!("/system.slice/docker-{ID}.scope"),
            "/kubepods.slice/kubepods-burstable.slice",
            "/kubepods/burstable/podnot-a-uid/abc",
        ] {
            assert_eq!(parse(path), None, "{path}");
        }
    }
}
