//! The real network operations, over rtnetlink: the node bridge, pod veth
//! pairs, addresses and routes. A [`Netlink`] is a netlink socket bound to
//! one network namespace: the agent's own ([`Netlink::current`]) or a pod's
//! ([`Netlink::in_namespace`], whose socket is opened by a short-lived thread
//! that first joins the pod's namespace with `setns(2)`; sockets keep the
//! namespace they were created in, and no runtime thread ever changes its own).

use super::cidr::Cidr;
use super::NetError;
use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkInfo};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol,
};
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkUnspec, LinkVeth, RouteMessageBuilder};
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

/// The routing protocol number marking routes the agent owns (`ip route`
/// shows it as `proto 86`), so it only ever deletes its own.
pub const ROUTE_PROTOCOL: u8 = 86;

const ENODEV: i32 = 19;
const ESRCH: i32 = 3;

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let what = what.into();
    move |source| NetError::Netlink { what, source }
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}

/// A route the agent wants: `dest` reached through `via`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Route {
    /// Destination prefix.
    pub dest: Cidr,
    /// Next hop.
    pub via: IpAddr,
}

/// A netlink socket in one network namespace.
pub struct Netlink {
    handle: Handle,
    conn: tokio::task::JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

impl Netlink {
    /// A socket in the calling process's namespace (needs a tokio runtime).
    pub fn current() -> Result<Netlink, NetError> {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| NetError::Io("netlink socket".into(), e))?;
        Ok(Netlink {
            handle,
            conn: tokio::spawn(conn),
        })
    }

    /// A socket in the namespace `ns` (an open `/proc/<pid>/ns/net`).
    pub async fn in_namespace(ns: File) -> Result<Netlink, NetError> {
        let rt = tokio::runtime::Handle::current();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("shoal-netns".into())
            .spawn(move || {
                let r = nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| NetError::Io("setns".into(), e.into()))
                    .and_then(|()| {
                        // The socket registers with the runtime's reactor.
                        let _guard = rt.enter();
                        rtnetlink::new_connection()
                            .map_err(|e| NetError::Io("netlink socket".into(), e))
                    });
                let _ = tx.send(r);
            })
            .map_err(|e| NetError::Io("spawning the netns thread".into(), e))?;
        let (conn, handle, _) = rx
            .await
            .map_err(|_| NetError::Other("the netns thread died".into()))??;
        Ok(Netlink {
            handle,
            conn: tokio::spawn(conn),
        })
    }

    /// The index and kind of the link called `name`, if it exists.
    pub async fn link(&self, name: &str) -> Result<Option<(u32, Option<InfoKind>)>, NetError> {
        let mut s = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match s.try_next().await {
            Ok(Some(m)) => {
                let kind = m.attributes.iter().find_map(|a| match a {
                    LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
                        LinkInfo::Kind(k) => Some(k.clone()),
                        _ => None,
                    }),
                    _ => None,
                });
                Ok(Some((m.header.index, kind)))
            }
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
            Err(e) => Err(nl(format!("looking up link {name}"))(e)),
        }
    }

    /// Bring a link up.
    pub async fn set_up(&self, index: u32) -> Result<(), NetError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(nl(format!("setting link {index} up")))
    }

    /// Make sure bridge `name` exists and is up, with exactly the addresses
    /// `want` (link-local ones aside); `mac` is set at creation so the bridge
    /// keeps one MAC address whatever ports join it. Returns its index.
    pub async fn ensure_bridge(
        &self,
        name: &str,
        mac: [u8; 6],
        want: &[(IpAddr, u8)],
    ) -> Result<u32, NetError> {
        let index = match self.link(name).await? {
            Some((i, Some(InfoKind::Bridge))) => i,
            Some((_, kind)) => {
                return Err(NetError::Other(format!(
                    "link {name} exists and is not a bridge ({kind:?})"
                )))
            }
            None => {
                self.handle
                    .link()
                    .add(LinkBridge::new(name).address(mac.to_vec()).build())
                    .execute()
                    .await
                    .map_err(nl(format!("creating bridge {name}")))?;
                self.link(name)
                    .await?
                    .ok_or_else(|| NetError::Other(format!("bridge {name} vanished")))?
                    .0
            }
        };
        self.ensure_addresses(index, want, true).await?;
        self.set_up(index).await?;
        Ok(index)
    }

    /// Global addresses on a link, with their prefix lengths.
    pub async fn addresses(&self, index: u32) -> Result<Vec<(IpAddr, u8)>, NetError> {
        let mut s = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let mut out = Vec::new();
        while let Some(m) = s
            .try_next()
            .await
            .map_err(nl(format!("listing addresses of link {index}")))?
        {
            if m.header.index != index {
                continue;
            }
            let ip = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let ip = ip.or_else(|| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            if let Some(ip) = ip {
                out.push((ip, m.header.prefix_len));
            }
        }
        Ok(out)
    }

    /// Add the addresses `want` (IPv6 ones without duplicate address
    /// detection, so they are usable at once); with `exclusive`, remove other
    /// global addresses of the link.
    pub async fn ensure_addresses(
        &self,
        index: u32,
        want: &[(IpAddr, u8)],
        exclusive: bool,
    ) -> Result<(), NetError> {
        let have = self.addresses(index).await?;
        for (ip, prefix) in want {
            if have.contains(&(*ip, *prefix)) {
                continue;
            }
            let mut req = self.handle.address().add(index, *ip, *prefix).replace();
            if ip.is_ipv6() {
                let m = req.message_mut();
                m.header.flags |= AddressHeaderFlags::Nodad;
                m.attributes
                    .push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
            req.execute()
                .await
                .map_err(nl(format!("adding {ip}/{prefix} to link {index}")))?;
        }
        if exclusive {
            let is_link_local = |ip: &IpAddr| match ip {
                IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
                IpAddr::V4(a) => a.is_link_local(),
            };
            for (ip, prefix) in have {
                if want.contains(&(ip, prefix)) || is_link_local(&ip) {
                    continue;
                }
                let mut s = self
                    .handle
                    .address()
                    .get()
                    .set_link_index_filter(index)
                    .set_address_filter(ip)
                    .execute();
                while let Ok(Some(m)) = s.try_next().await {
                    let _ = self.handle.address().del(m).execute().await;
                }
            }
        }
        Ok(())
    }

    /// A global address of the other family on the link that holds `ip`
    /// (a dual-stack node's second InternalIP).
    pub async fn other_family_address(&self, ip: IpAddr) -> Result<Option<IpAddr>, NetError> {
        let mut s = self.handle.address().get().execute();
        let mut all = Vec::new();
        while let Some(m) = s.try_next().await.map_err(nl("listing addresses"))? {
            let addr = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) | AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            });
            if let Some(a) = addr {
                all.push((m.header.index, a));
            }
        }
        let Some(index) = all.iter().find(|(_, a)| *a == ip).map(|(i, _)| *i) else {
            return Ok(None);
        };
        let global = |a: &IpAddr| match a {
            IpAddr::V6(v) => (v.segments()[0] & 0xffc0) != 0xfe80 && !v.is_loopback(),
            IpAddr::V4(v) => !v.is_link_local() && !v.is_loopback(),
        };
        Ok(all
            .into_iter()
            .find(|(i, a)| *i == index && a.is_ipv4() != ip.is_ipv4() && global(a))
            .map(|(_, a)| a))
    }

    /// Create a veth pair: `host` here, its peer created directly in the
    /// namespace `ns` under the name `peer`.
    pub async fn add_veth_into(&self, host: &str, peer: &str, ns: &File) -> Result<(), NetError> {
        let peer_msg = LinkUnspec::new_with_name(peer)
            .setns_by_fd(ns.as_raw_fd())
            .build();
        let msg = LinkVeth::new(host, peer)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(nl(format!("creating veth pair {host}")))
    }

    /// Attach link `index` to bridge `bridge` in hairpin mode and bring it up.
    ///
    /// Hairpin mode lets the bridge send a frame back out of the port it
    /// came in on. A pod reaching its own Service can be sent to itself;
    /// where the kernel passes bridged traffic through netfilter
    /// (br_netfilter, `bridge-nf-call-iptables`), that DNATed frame is
    /// bridged back to the pod's own port, and without hairpin mode dropped
    /// (kubenet's `hairpin-veth`, the CNI bridge plugin's `hairpinMode`).
    pub async fn attach(&self, index: u32, bridge: u32) -> Result<(), NetError> {
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .controller(bridge)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(nl(format!("attaching link {index} to bridge {bridge}")))?;
        // Port settings go in RTM_NEWLINK (`set_port`), not RTM_SETLINK.
        self.handle
            .link()
            .set_port(LinkBridgePort::new(index).hairpin(true).build())
            .execute()
            .await
            .map_err(nl(format!("hairpin mode on bridge port {index}")))
    }

    /// Delete link `name`; whether it existed.
    pub async fn delete_link(&self, name: &str) -> Result<bool, NetError> {
        let Some((index, _)) = self.link(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(false),
            Err(e) => Err(nl(format!("deleting link {name}"))(e)),
        }
    }

    /// Set the default route of `gateway`'s family through `gateway` on link `index`.
    pub async fn default_route(&self, gateway: IpAddr, index: u32) -> Result<(), NetError> {
        let msg = match gateway {
            IpAddr::V4(g) => RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(g)
                .output_interface(index)
                .build(),
            IpAddr::V6(g) => RouteMessageBuilder::<Ipv6Addr>::new()
                .gateway(g)
                .output_interface(index)
                .build(),
        };
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(nl(format!("default route via {gateway}")))
    }

    /// Add (or replace) a route owned by the agent.
    pub async fn replace_route(&self, r: &Route) -> Result<(), NetError> {
        let what = || format!("route {} via {}", r.dest, r.via);
        let msg = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(r.dest.network(), r.dest.prefix())
            .and_then(|b| b.gateway(r.via))
            .map_err(|e| NetError::Other(format!("{}: {e}", what())))?
            .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
            .build();
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(nl(what()))
    }

    /// The routes of the main table marked with [`ROUTE_PROTOCOL`].
    pub async fn owned_routes(&self) -> Result<Vec<(Route, RouteMessage)>, NetError> {
        let mut out = Vec::new();
        for probe in [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ] {
            let mut s = self.handle.route().get(probe).execute();
            while let Some(m) = s.try_next().await.map_err(nl("listing routes"))? {
                if m.header.protocol != RouteProtocol::Other(ROUTE_PROTOCOL)
                    || m.header.table != RouteHeader::RT_TABLE_MAIN
                {
                    continue;
                }
                let addr = |a: &RouteAddress| match a {
                    RouteAddress::Inet(v) => Some(IpAddr::V4(*v)),
                    RouteAddress::Inet6(v) => Some(IpAddr::V6(*v)),
                    _ => None,
                };
                let dest = m.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Destination(d) => addr(d),
                    _ => None,
                });
                let via = m.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Gateway(g) => addr(g),
                    _ => None,
                });
                if let (Some(d), Some(via)) = (dest, via) {
                    if let Ok(dest) = Cidr::new(d, m.header.destination_prefix_length) {
                        out.push((Route { dest, via }, m));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Delete a route as listed.
    pub async fn delete_route(&self, m: RouteMessage) -> Result<(), NetError> {
        match self.handle.route().del(m).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(ESRCH) => Ok(()),
            Err(e) => Err(nl("deleting a route")(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run `f` on a thread of its own inside a fresh, private network
    /// namespace (never the machine's); None where that is not allowed.
    fn in_private_netns<F, Fut>(f: F) -> Option<()>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()>,
    {
        std::thread::spawn(move || {
            if nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
                return None;
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(f());
            Some(())
        })
        .join()
        .unwrap()
    }

    #[test]
    fn owned_routes_read_back_as_written_in_both_families() {
        let ran = in_private_netns(|| async {
            let nl = Netlink::current().unwrap();
            nl.handle
                .link()
                .add(LinkBridge::new("d0").build())
                .execute()
                .await
                .unwrap();
            let (d0, _) = nl.link("d0").await.unwrap().unwrap();
            let addrs = [
                ("10.9.0.1".parse().unwrap(), 24),
                ("fd00:9::1".parse().unwrap(), 64),
            ];
            nl.ensure_addresses(d0, &addrs, true).await.unwrap();
            nl.set_up(d0).await.unwrap();
            let want = [
                Route {
                    dest: "10.42.5.0/24".parse().unwrap(),
                    via: "10.9.0.2".parse().unwrap(),
                },
                Route {
                    dest: "fd42:0:0:5::/64".parse().unwrap(),
                    via: "fd00:9::2".parse().unwrap(),
                },
            ];
            for r in &want {
                nl.replace_route(r).await.unwrap();
                // Replacing is idempotent.
                nl.replace_route(r).await.unwrap();
            }
            let mut got: Vec<Route> = nl
                .owned_routes()
                .await
                .unwrap()
                .into_iter()
                .map(|(r, _)| r)
                .collect();
            got.sort();
            assert_eq!(got, want);
            for (_, m) in nl.owned_routes().await.unwrap() {
                nl.delete_route(m).await.unwrap();
            }
            assert!(nl.owned_routes().await.unwrap().is_empty());
            assert_eq!(
                nl.addresses(d0).await.unwrap().len(),
                3,
                "two global, one link-local"
            );
        });
        if ran.is_none() {
            eprintln!("skipping: cannot create a network namespace (needs root)");
        }
    }
}
