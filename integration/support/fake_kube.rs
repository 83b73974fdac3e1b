//! An in-process fake Kubernetes API server: it serves LIST and WATCH for pods, services,
//! EndpointSlices and ReplicaSets from fixtures, the way the API server does (a list with a
//! resourceVersion, then a watch stream of JSON events), and lets a test add, change and delete
//! objects, or expire the watches with 410 Gone. A real cluster cannot run here.
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::sync::mpsc;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// The collections served, by path.
pub const PODS: &str = "/api/v1/pods";
pub const SERVICES: &str = "/api/v1/services";
pub const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
pub const REPLICA_SETS: &str = "/apis/apps/v1/replicasets";

#[derive(Default)]
struct State {
    version: u64,
    /// Objects by collection, then by namespace/name.
    objects: HashMap<&'static str, HashMap<String, Value>>,
    /// Open watch streams by collection, with their field selector (node name).
    watchers: Vec<(&'static str, Option<String>, mpsc::UnboundedSender<Bytes>)>,
    requests: Vec<String>,
}

#[derive(Clone, Default)]
pub struct FakeKube {
    state: Arc<Mutex<State>>,
}

fn collection(path: &str) -> Option<&'static str> {
    [PODS, SERVICES, SLICES, REPLICA_SETS].into_iter().find(|c| *c == path)
}

fn kind_of(collection: &str) -> &'static str {
    match collection {
        PODS => "PodList",
        SERVICES => "ServiceList",
        SLICES => "EndpointSliceList",
        _ => "ReplicaSetList",
    }
}

fn id(object: &Value) -> String {
    format!(
        "{}/{}",
        object["metadata"]["namespace"].as_str().unwrap_or(""),
        object["metadata"]["name"].as_str().unwrap_or("")
    )
}

fn on_node(object: &Value, node: Option<&str>) -> bool {
    node.is_none_or(|n| object["spec"]["nodeName"].as_str() == Some(n))
}

impl FakeKube {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serves on 127.0.0.1:`port` from `runtime`.
    pub fn serve(&self, runtime: &tokio::runtime::Runtime, port: u16) {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind the fake API server");
        listener.set_nonblocking(true).expect("nonblocking");
        let fake = self.clone();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let fake = fake.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let fake = fake.clone();
                        async move { Ok::<_, Infallible>(fake.respond(&req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    }

    fn respond(&self, req: &Request<hyper::body::Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        let mut state = self.lock();
        state.requests.push(format!("{path}?{query}"));
        let Some(collection) = collection(&path) else {
            return Response::builder()
                .status(404)
                .body(Full::new(Bytes::from_static(b"{}")).boxed())
                .expect("response");
        };
        let node = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("fieldSelector=spec.nodeName%3D"))
            .map(str::to_string);
        if query.split('&').any(|kv| kv == "watch=true") {
            let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
            state.watchers.push((collection, node, tx));
            let stream = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
            });
            return Response::builder()
                .header("content-type", "application/json")
                .body(BodyExt::boxed(StreamBody::new(stream)))
                .expect("response");
        }
        let items: Vec<Value> = state
            .objects
            .get(collection)
            .map(|o| o.values().filter(|v| on_node(v, node.as_deref())).cloned().collect())
            .unwrap_or_default();
        let body = json!({
            "apiVersion": "v1",
            "kind": kind_of(collection),
            "metadata": { "resourceVersion": state.version.to_string() },
            "items": items,
        });
        Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())).boxed())
            .expect("response")
    }

    fn event(state: &mut State, collection: &'static str, kind: &str, object: &Value) {
        let line = Bytes::from(format!("{}\n", json!({ "type": kind, "object": object })));
        state.watchers.retain(|(c, node, tx)| {
            if *c != collection || !on_node(object, node.as_deref()) {
                return !tx.is_closed();
            }
            tx.send(line.clone()).is_ok()
        });
    }

    /// Adds or replaces an object (ADDED or MODIFIED to the open watches).
    pub fn apply(&self, collection: &'static str, mut object: Value) {
        let mut state = self.lock();
        state.version += 1;
        object["metadata"]["resourceVersion"] = json!(state.version.to_string());
        let key = id(&object);
        let existed = state
            .objects
            .entry(collection)
            .or_default()
            .insert(key, object.clone())
            .is_some();
        Self::event(
            &mut state,
            collection,
            if existed { "MODIFIED" } else { "ADDED" },
            &object,
        );
    }

    /// Deletes an object (DELETED to the open watches).
    pub fn delete(&self, collection: &'static str, namespace: &str, name: &str) {
        let mut state = self.lock();
        state.version += 1;
        let version = state.version.to_string();
        let removed = state
            .objects
            .get_mut(collection)
            .and_then(|o| o.remove(&format!("{namespace}/{name}")));
        if let Some(mut object) = removed {
            object["metadata"]["resourceVersion"] = json!(version);
            Self::event(&mut state, collection, "DELETED", &object);
        }
    }

    /// Changes an object without telling the watches, then expires them with 410 Gone, as an
    /// API server does when a watch's resourceVersion is too old: only a relist sees the change.
    pub fn replace_behind_watches_and_expire(&self, collection: &'static str, objects: Vec<Value>) {
        let mut state = self.lock();
        state.version += 1;
        let version = state.version.to_string();
        let map = state.objects.entry(collection).or_default();
        map.clear();
        for mut object in objects {
            object["metadata"]["resourceVersion"] = json!(version.clone());
            map.insert(id(&object), object);
        }
        let gone = json!({
            "type": "ERROR",
            "object": { "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Expired",
                        "message": "too old resource version", "code": 410 }
        });
        let line = Bytes::from(format!("{gone}\n"));
        state.watchers.retain(|(c, _, tx)| {
            if *c == collection {
                let _ = tx.send(line.clone());
                false // the server ends the stream after the error
            } else {
                !tx.is_closed()
            }
        });
    }

    /// Requests seen (path?query), in order.
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }
}

/// A pod fixture: `owner` is (kind, name) of its controller.
pub fn pod(namespace: &str, name: &str, uid: &str, node: &str, ip: &str, owner: Option<(&str, &str)>) -> Value {
    let owners: Vec<Value> = owner
        .map(|(kind, name)| json!({ "apiVersion": "apps/v1", "kind": kind, "name": name, "uid": format!("{name}-uid"), "controller": true }))
        .into_iter()
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": namespace, "uid": uid, "ownerReferences": owners },
        "spec": { "nodeName": node, "containers": [] },
        "status": { "podIP": ip, "podIPs": [{ "ip": ip }] }
    })
}

pub fn host_network_pod(namespace: &str, name: &str, uid: &str, node: &str, ip: &str) -> Value {
    let mut p = pod(namespace, name, uid, node, ip, None);
    p["spec"]["hostNetwork"] = json!(true);
    p
}

pub fn replica_set(namespace: &str, name: &str, deployment: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": { "name": name, "namespace": namespace, "uid": format!("{name}-uid"),
                      "ownerReferences": [{ "apiVersion": "apps/v1", "kind": "Deployment", "name": deployment,
                                            "uid": format!("{deployment}-uid"), "controller": true }] }
    })
}

pub fn service(namespace: &str, name: &str, cluster_ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": name, "namespace": namespace, "uid": format!("{name}-svc-uid") },
        "spec": { "clusterIP": cluster_ip, "clusterIPs": [cluster_ip], "ports": [{ "port": 80 }] }
    })
}

pub fn endpoint_slice(namespace: &str, service: &str, addresses: &[&str]) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": { "name": format!("{service}-abcde"), "namespace": namespace, "uid": format!("{service}-slice-uid"),
                      "labels": { "kubernetes.io/service-name": service } },
        "addressType": "IPv4",
        "endpoints": addresses.iter().map(|a| json!({ "addresses": [a] })).collect::<Vec<_>>()
    })
}
