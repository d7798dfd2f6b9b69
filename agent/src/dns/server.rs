//! The DNS request handler (answers from the [`Records`] index, forwards
//! or refuses other names) and the listeners it is served on.

use super::index::{Lookup, Records};
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{
    Edns, Header, HeaderCounts, Message, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_server::proto::rr::{Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a forwarded query waits for one upstream server.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);

/// How long an idle TCP client connection is kept.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// Errors starting the DNS server.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// A socket could not be opened or bound.
    #[error("dns listen {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
}

/// Sends names outside the cluster zone to upstream servers.
#[derive(Debug, Clone)]
pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    timeout: Duration,
}

impl Forwarder {
    /// A forwarder trying `upstreams` in order, each for at most `timeout`.
    pub fn new(upstreams: Vec<SocketAddr>, timeout: Duration) -> Forwarder {
        Forwarder { upstreams, timeout }
    }

    /// Send the raw query to the upstreams in turn; the first answer wins.
    /// A truncated UDP answer is retried over TCP when the client came over TCP.
    async fn forward(&self, raw: &[u8], tcp: bool) -> Option<Message> {
        for up in &self.upstreams {
            let got = tokio::time::timeout(self.timeout, async {
                let m = forward_udp(*up, raw).await?;
                if m.metadata.truncation && tcp {
                    return forward_tcp(*up, raw).await;
                }
                Ok(m)
            })
            .await;
            match got {
                Ok(Ok(m)) => return Some(m),
                Ok(Err(e)) => tracing::debug!(upstream = %up, error = %e, "forwarding a DNS query"),
                Err(_) => tracing::debug!(upstream = %up, "forwarded DNS query timed out"),
            }
        }
        None
    }
}

fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

async fn forward_udp(up: SocketAddr, raw: &[u8]) -> std::io::Result<Message> {
    let bind: SocketAddr = if up.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = tokio::net::UdpSocket::bind(bind).await?;
    sock.connect(up).await?;
    sock.send(raw).await?;
    let id = raw.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let mut buf = vec![0u8; 65535];
    loop {
        let n = sock.recv(&mut buf).await?;
        let m = Message::from_vec(&buf[..n]).map_err(io_err)?;
        if Some(m.metadata.id) == id {
            return Ok(m);
        }
    }
}

async fn forward_tcp(up: SocketAddr, raw: &[u8]) -> std::io::Result<Message> {
    let mut s = tokio::net::TcpStream::connect(up).await?;
    let len = u16::try_from(raw.len()).map_err(io_err)?;
    s.write_all(&len.to_be_bytes()).await?;
    s.write_all(raw).await?;
    let mut l = [0u8; 2];
    s.read_exact(&mut l).await?;
    let mut buf = vec![0u8; u16::from_be_bytes(l) as usize];
    s.read_exact(&mut buf).await?;
    Message::from_vec(&buf).map_err(io_err)
}

/// Answers queries: cluster names from the index, others forwarded or refused.
pub struct DnsHandler {
    records: Arc<Records>,
    forwarder: Option<Forwarder>,
}

impl DnsHandler {
    /// A handler over `records`, forwarding other names when `forwarder` is set.
    pub fn new(records: Arc<Records>, forwarder: Option<Forwarder>) -> DnsHandler {
        DnsHandler { records, forwarder }
    }
}

fn failed(req: &Metadata, code: ResponseCode) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(req);
    metadata.response_code = code;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}

/// The records of `all` that answer a query of type `qtype`: those of that
/// type, or the name's CNAME when it has one (the resolver follows it).
fn matching(all: &[Record], qtype: RecordType) -> Vec<&Record> {
    let of_type: Vec<&Record> = all
        .iter()
        .filter(|r| qtype == RecordType::ANY || r.record_type() == qtype)
        .collect();
    if !of_type.is_empty() {
        return of_type;
    }
    all.iter()
        .filter(|r| r.record_type() == RecordType::CNAME)
        .collect()
}

#[async_trait::async_trait]
impl RequestHandler for DnsHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let mut resp_edns = Edns::new();
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(e) = request.edns.as_ref() {
            resp_edns.set_max_payload(e.max_payload().max(512));
            builder.edns(&resp_edns);
        }
        let req_meta = &request.metadata;
        let code =
            if req_meta.message_type != MessageType::Query || req_meta.op_code != OpCode::Query {
                Some(ResponseCode::NotImp)
            } else if request.queries.len() != 1 {
                Some(ResponseCode::FormErr)
            } else {
                None
            };
        if let Some(code) = code {
            let msg = builder.error_msg(req_meta, code);
            return response
                .send_response(msg)
                .await
                .unwrap_or_else(|_| failed(req_meta, code));
        }
        let query = &request.queries.queries()[0];
        let mut meta = Metadata::response_from_request(req_meta);
        meta.recursion_available = self.forwarder.is_some();
        let soa = self.records.zone().soa.clone();
        let sent = match self.records.lookup(query.name()) {
            Lookup::Found(all) => {
                meta.authoritative = true;
                let answers = matching(&all, query.query_type());
                let negative = answers.is_empty();
                let soa_iter = negative.then_some(&soa);
                response
                    .send_response(builder.build(meta, answers, [], soa_iter, []))
                    .await
            }
            found @ (Lookup::Empty | Lookup::NxDomain) => {
                meta.authoritative = true;
                if matches!(found, Lookup::NxDomain) {
                    meta.response_code = ResponseCode::NXDomain;
                }
                response
                    .send_response(builder.build(meta, [], [], [&soa], []))
                    .await
            }
            Lookup::Outside => match &self.forwarder {
                None => {
                    meta.response_code = ResponseCode::Refused;
                    response.send_response(builder.build_no_records(meta)).await
                }
                Some(f) => {
                    let tcp = request.protocol().is_stream();
                    match f.forward(request.as_slice(), tcp).await {
                        Some(m) => {
                            let mut fm = m.metadata;
                            fm.id = req_meta.id;
                            response
                                .send_response(builder.build(
                                    fm,
                                    m.answers.iter(),
                                    m.authorities.iter(),
                                    [],
                                    m.additionals.iter(),
                                ))
                                .await
                        }
                        None => {
                            meta.response_code = ResponseCode::ServFail;
                            response.send_response(builder.build_no_records(meta)).await
                        }
                    }
                }
            },
        };
        sent.unwrap_or_else(|e| {
            tracing::debug!(error = %e, "sending a DNS response");
            failed(req_meta, ResponseCode::ServFail)
        })
    }
}

/// A running DNS server and where it listens.
pub struct DnsServer {
    /// The bound UDP (and, on the same ports, TCP) addresses.
    pub addrs: Vec<SocketAddr>,
    server: Server<DnsHandler>,
}

impl DnsServer {
    /// Run until the listeners fail (normally forever).
    pub async fn run(mut self) {
        if let Err(e) = self.server.block_until_done().await {
            tracing::warn!(error = %e, "dns server stopped");
        }
    }

    /// Stop accepting queries and wait for the tasks to end.
    pub async fn shutdown(mut self) {
        let _ = self.server.shutdown_gracefully().await;
    }
}

/// Open a UDP socket and a TCP listener on `addr` (a port of 0 picks one
/// free for both). With `freebind` the address need not exist yet (the pod
/// bridge gets its gateway addresses when the node's podCIDRs are known).
pub fn bind_pair(
    addr: SocketAddr,
    freebind: bool,
) -> Result<(tokio::net::UdpSocket, tokio::net::TcpListener), DnsError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let open = |a: SocketAddr, ty: Type| -> std::io::Result<Socket> {
        let proto = if ty == Type::DGRAM {
            Protocol::UDP
        } else {
            Protocol::TCP
        };
        let s = Socket::new(Domain::for_address(a), ty, Some(proto))?;
        if a.is_ipv6() {
            s.set_only_v6(true)?;
        }
        if freebind {
            if a.is_ipv4() {
                s.set_freebind_v4(true)?;
            } else {
                s.set_freebind_v6(true)?;
            }
        }
        s.set_reuse_address(true)?;
        s.set_nonblocking(true)?;
        s.bind(&a.into())?;
        Ok(s)
    };
    let err = |e| DnsError::Bind(addr, e);
    // With port 0 the TCP port must match the one UDP got; retry on a clash.
    let mut last = None;
    for _ in 0..16 {
        let udp = open(addr, Type::DGRAM).map_err(err)?;
        let got = udp
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .unwrap_or(addr);
        let tcp = match open(got, Type::STREAM).and_then(|t| t.listen(1024).map(|_| t)) {
            Ok(t) => t,
            Err(e) if addr.port() == 0 => {
                last = Some(e);
                continue;
            }
            Err(e) => return Err(err(e)),
        };
        let udp = tokio::net::UdpSocket::from_std(udp.into()).map_err(err)?;
        let tcp = tokio::net::TcpListener::from_std(tcp.into()).map_err(err)?;
        return Ok((udp, tcp));
    }
    Err(err(
        last.unwrap_or_else(|| std::io::Error::other("no free port"))
    ))
}

/// Serve `handler` on UDP and TCP at each of `addrs`; returns the server
/// (spawned listener tasks; drive it with [`DnsServer::run`]).
pub fn serve(
    handler: DnsHandler,
    addrs: &[SocketAddr],
    freebind: bool,
) -> Result<DnsServer, DnsError> {
    let mut server = Server::new(handler);
    let mut bound = Vec::new();
    for a in addrs {
        let (udp, tcp) = bind_pair(*a, freebind)?;
        bound.push(udp.local_addr().unwrap_or(*a));
        server.register_socket(udp);
        server.register_listener(tcp, TCP_IDLE, 64 * 1024);
    }
    Ok(DnsServer {
        addrs: bound,
        server,
    })
}
