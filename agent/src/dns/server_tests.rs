//! The server over loopback: real UDP/TCP queries built and parsed with
//! hickory's message types.

use super::index::{Index, Zone};
use super::server::{serve, DnsHandler, Forwarder};
use hickory_server::proto::op::{Message, Query, ResponseCode};
use hickory_server::proto::rr::{Name, RecordType};
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn index() -> Index {
    let mut idx = Index::new(Zone::new("cluster.local").unwrap());
    idx.apply_service(
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
        }))
        .unwrap(),
    );
    idx.apply_service(
        serde_json::from_value(json!({
            "metadata": {"name": "web6", "namespace": "shop"},
            "spec": {"clusterIP": "fd00:96::10", "clusterIPs": ["fd00:96::10"]}
        }))
        .unwrap(),
    );
    idx.apply_service(
        serde_json::from_value(json!({
            "metadata": {"name": "db", "namespace": "shop"},
            "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}
        }))
        .unwrap(),
    );
    idx.apply_slice(
        serde_json::from_value(json!({
            "metadata": {"name": "db-1", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4",
            "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.244.1.5"], "hostname": "db-0", "conditions": {"ready": true}},
                {"addresses": ["10.244.2.9"], "hostname": "db-1", "conditions": {"ready": true}}
            ]
        }))
        .unwrap(),
    );
    idx
}

fn query(name: &str, t: RecordType) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = rand_id(name, t);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    m.to_vec().unwrap()
}

fn rand_id(name: &str, t: RecordType) -> u16 {
    (name.len() as u16)
        .wrapping_mul(31)
        .wrapping_add(u16::from(t))
}

async fn udp(addr: SocketAddr, name: &str, t: RecordType) -> Message {
    let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.send_to(&query(name, t), addr).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.recv(&mut buf))
        .await
        .expect("an answer, not a timeout")
        .unwrap();
    let m = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(m.metadata.id, rand_id(name, t));
    m
}

async fn tcp(addr: SocketAddr, name: &str, t: RecordType) -> Message {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let q = query(name, t);
    s.write_all(&(q.len() as u16).to_be_bytes()).await.unwrap();
    s.write_all(&q).await.unwrap();
    let mut l = [0u8; 2];
    s.read_exact(&mut l).await.unwrap();
    let mut buf = vec![0u8; u16::from_be_bytes(l) as usize];
    s.read_exact(&mut buf).await.unwrap();
    Message::from_vec(&buf).unwrap()
}

fn answers(m: &Message) -> Vec<String> {
    let mut v: Vec<String> = m.answers.iter().map(|r| r.data.to_string()).collect();
    v.sort();
    v
}

fn start(idx: &Index, fwd: Option<Forwarder>) -> SocketAddr {
    let s = serve(
        DnsHandler::new(idx.records(), fwd),
        &["127.0.0.1:0".parse().unwrap()],
        false,
    )
    .unwrap();
    let addr = s.addrs[0];
    tokio::spawn(s.run());
    addr
}

#[tokio::test]
async fn answers_cluster_names_over_udp_and_tcp() {
    let idx = index();
    let addr = start(&idx, None);

    let a = udp(addr, "web.shop.svc.cluster.local.", RecordType::A).await;
    assert_eq!(a.metadata.response_code, ResponseCode::NoError);
    assert!(a.metadata.authoritative);
    assert_eq!(answers(&a), vec!["10.96.0.10"]);
    assert_eq!(a.answers[0].ttl, 5);
    // Names are case-insensitive.
    let a = udp(addr, "WEB.Shop.svc.cluster.local.", RecordType::A).await;
    assert_eq!(answers(&a), vec!["10.96.0.10"]);

    let t = tcp(addr, "web.shop.svc.cluster.local.", RecordType::A).await;
    assert_eq!(answers(&t), vec!["10.96.0.10"]);

    let six = udp(addr, "web6.shop.svc.cluster.local.", RecordType::AAAA).await;
    assert_eq!(answers(&six), vec!["fd00:96::10"]);

    // NODATA: the name exists, the type has no data; the SOA says for how long.
    let nodata = udp(addr, "web.shop.svc.cluster.local.", RecordType::AAAA).await;
    assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
    assert!(nodata.answers.is_empty());
    assert_eq!(nodata.authorities[0].record_type(), RecordType::SOA);
    let ns = udp(addr, "shop.svc.cluster.local.", RecordType::A).await;
    assert_eq!(ns.metadata.response_code, ResponseCode::NoError);

    let nx = udp(addr, "nope.shop.svc.cluster.local.", RecordType::A).await;
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(nx.authorities[0].record_type(), RecordType::SOA);

    let srv = udp(
        addr,
        "_http._tcp.web.shop.svc.cluster.local.",
        RecordType::SRV,
    )
    .await;
    assert_eq!(answers(&srv), vec!["0 100 80 web.shop.svc.cluster.local."]);

    let ptr = udp(addr, "10.0.96.10.in-addr.arpa.", RecordType::PTR).await;
    assert_eq!(answers(&ptr), vec!["web.shop.svc.cluster.local."]);
    let ptr6 = udp(
        addr,
        &format!(
            "{}",
            Name::from("fd00:96::10".parse::<std::net::IpAddr>().unwrap())
        ),
        RecordType::PTR,
    )
    .await;
    assert_eq!(answers(&ptr6), vec!["web6.shop.svc.cluster.local."]);
}

#[tokio::test]
async fn headless_services_answer_pod_addresses_and_hostnames() {
    let idx = index();
    let addr = start(&idx, None);
    let all = udp(addr, "db.shop.svc.cluster.local.", RecordType::A).await;
    assert_eq!(answers(&all), vec!["10.244.1.5", "10.244.2.9"]);
    let one = udp(addr, "db-1.db.shop.svc.cluster.local.", RecordType::A).await;
    assert_eq!(answers(&one), vec!["10.244.2.9"]);
    let srv = udp(addr, "_pg._tcp.db.shop.svc.cluster.local.", RecordType::SRV).await;
    assert_eq!(
        answers(&srv),
        vec![
            "0 50 5432 db-0.db.shop.svc.cluster.local.",
            "0 50 5432 db-1.db.shop.svc.cluster.local."
        ]
    );
    let ptr = udp(addr, "9.2.244.10.in-addr.arpa.", RecordType::PTR).await;
    assert_eq!(answers(&ptr), vec!["db-1.db.shop.svc.cluster.local."]);
}

#[tokio::test]
async fn other_names_are_refused_without_upstreams_and_forwarded_with() {
    let idx = index();
    let cluster = start(&idx, None);
    let started = std::time::Instant::now();
    let r = udp(cluster, "example.com.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused at once"
    );
    // An unknown reverse name is not ours either.
    let r = udp(cluster, "1.0.0.127.in-addr.arpa.", RecordType::PTR).await;
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);

    // The upstream: another server, authoritative for another zone.
    let mut up = Index::new(Zone::new("upstream.test").unwrap());
    up.apply_service(
        serde_json::from_value(json!({
            "metadata": {"name": "far", "namespace": "x"},
            "spec": {"clusterIP": "192.0.2.7"}
        }))
        .unwrap(),
    );
    let upstream = start(&up, None);
    // The first upstream does not answer at all: the next one is tried.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let fwd = Forwarder::new(
        vec![silent.local_addr().unwrap(), upstream],
        Duration::from_millis(300),
    );
    let forwarding = start(&idx, Some(fwd));
    let r = udp(forwarding, "far.x.svc.upstream.test.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(answers(&r), vec!["192.0.2.7"]);
    let r = tcp(forwarding, "far.x.svc.upstream.test.", RecordType::A).await;
    assert_eq!(answers(&r), vec!["192.0.2.7"]);
    let r = udp(forwarding, "gone.x.svc.upstream.test.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    // Cluster names are still answered locally.
    let r = udp(forwarding, "web.shop.svc.cluster.local.", RecordType::A).await;
    assert_eq!(answers(&r), vec!["10.96.0.10"]);
}

#[tokio::test]
async fn updates_are_seen_by_the_next_query() {
    let mut idx = index();
    let addr = start(&idx, None);
    idx.delete_service("shop", "web");
    let r = udp(addr, "web.shop.svc.cluster.local.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    idx.apply_service(
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.99"}
        }))
        .unwrap(),
    );
    let r = udp(addr, "web.shop.svc.cluster.local.", RecordType::A).await;
    assert_eq!(answers(&r), vec!["10.96.0.99"]);
}
