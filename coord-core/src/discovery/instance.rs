//! A service instance: what a registration stores and a balancer picks.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The longest service name, in bytes.
pub const MAX_SERVICE_NAME_LEN: usize = 128;

/// The longest instance id, in bytes.
pub const MAX_INSTANCE_ID_LEN: usize = 256;

/// The largest serialized instance (tags and metadata included), in bytes.
pub const MAX_INSTANCE_BYTES: usize = 16 * 1024;

/// The largest weight an instance may carry.
pub const MAX_WEIGHT: u32 = 10_000;

/// Whether an instance takes traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum InstanceStatus {
    /// Takes new traffic.
    #[default]
    Up,
    /// Finishing what it has; takes no new traffic (about to stop).
    Draining,
    /// Takes no traffic.
    Down,
}

impl fmt::Display for InstanceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InstanceStatus::Up => "up",
            InstanceStatus::Draining => "draining",
            InstanceStatus::Down => "down",
        })
    }
}

/// One instance of a service: where it listens and how it may be routed to.
///
/// ```
/// use coord_core::discovery::{InstanceStatus, ServiceInstance};
///
/// let instance = ServiceInstance::new("billing", "billing-1", "10.0.0.7:8080")
///     .tag("grpc")
///     .metadata("region", "eu-west-1")
///     .zone("eu-west-1a")
///     .version("2.3.1")
///     .weight(200);
/// instance.validate()?;
/// assert_eq!(instance.status, InstanceStatus::Up);
/// # Ok::<_, coord_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ServiceInstance {
    /// Unique within its service (a host name and port, a pod name, a UUID).
    pub id: String,
    /// The service's name: letters, digits, `-`, `_` and `.`.
    pub service: String,
    /// Where it listens: `host:port` (an IP address or a DNS name).
    pub addr: String,
    /// Free-form labels routing can filter on (`grpc`, `canary`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Free-form key-value pairs routing can filter on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Relative share of traffic for the weighted balancers (1 to 10,000; 100 by default).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Availability zone, for zone-aware routing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Data centre (or region), for data-centre-aware routing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datacenter: Option<String>,
    /// The version it runs, for canary routing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Whether it takes traffic.
    #[serde(default)]
    pub status: InstanceStatus,
}

fn default_weight() -> u32 {
    100
}

impl ServiceInstance {
    /// An `Up` instance of weight 100 with no tags, metadata, zone or version.
    pub fn new(
        service: impl Into<String>,
        id: impl Into<String>,
        addr: impl Into<String>,
    ) -> ServiceInstance {
        ServiceInstance {
            id: id.into(),
            service: service.into(),
            addr: addr.into(),
            tags: Vec::new(),
            metadata: BTreeMap::new(),
            weight: default_weight(),
            zone: None,
            datacenter: None,
            version: None,
            status: InstanceStatus::Up,
        }
    }

    /// Adds a tag.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        let tag = tag.into();
        if !self.tags.contains(&tag) {
            self.tags.push(tag);
        }
        self
    }

    /// Sets a metadata entry.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Sets the weight.
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Sets the zone.
    pub fn zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = Some(zone.into());
        self
    }

    /// Sets the data centre.
    pub fn datacenter(mut self, datacenter: impl Into<String>) -> Self {
        self.datacenter = Some(datacenter.into());
        self
    }

    /// Sets the version.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// Sets the status.
    pub fn status(mut self, status: InstanceStatus) -> Self {
        self.status = status;
        self
    }

    /// Whether the instance carries `tag`.
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }

    /// Checks every field; [`Error::InvalidArgument`] says which is wrong.
    pub fn validate(&self) -> Result<()> {
        validate_service_name(&self.service)?;
        validate_instance_id(&self.id)?;
        validate_addr(&self.addr).map_err(|why| {
            Error::invalid(format!(
                "instance {:?}: address {:?} {why}",
                self.id, self.addr
            ))
        })?;
        if self.weight > MAX_WEIGHT {
            return Err(Error::invalid(format!(
                "instance {:?}: weight {} is over the maximum of {MAX_WEIGHT}",
                self.id, self.weight
            )));
        }
        if self.weight == 0 && self.status == InstanceStatus::Up {
            return Err(Error::invalid(format!(
                "instance {:?}: weight 0 on an Up instance would never be picked; \
                 give it a weight of 1 or more, or mark it Draining or Down",
                self.id
            )));
        }
        for tag in &self.tags {
            if tag.is_empty() {
                return Err(Error::invalid(format!(
                    "instance {:?}: an empty tag",
                    self.id
                )));
            }
        }
        if self.metadata.keys().any(String::is_empty) {
            return Err(Error::invalid(format!(
                "instance {:?}: an empty metadata key",
                self.id
            )));
        }
        let size = self.encode()?.len();
        if size > MAX_INSTANCE_BYTES {
            return Err(Error::invalid(format!(
                "instance {:?}: {size} bytes once encoded, over the limit of {MAX_INSTANCE_BYTES} \
                 (keep tags and metadata small)",
                self.id
            )));
        }
        Ok(())
    }

    /// The stored form (JSON), shared by every backend.
    pub fn encode(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| Error::Codec {
            message: format!("instance {:?} could not be encoded: {e}", self.id),
            source: Some(Box::new(e)),
        })
    }

    /// Reads the stored form back; a corrupted entry is a [`Error::Codec`]
    /// naming where it was found.
    pub fn decode(bytes: &[u8], at: &str) -> Result<ServiceInstance> {
        serde_json::from_slice(bytes).map_err(|e| Error::Codec {
            message: format!("registry entry {at} is not a service instance: {e}"),
            source: Some(Box::new(e)),
        })
    }
}

/// Checks a service name: 1 to 128 bytes of ASCII letters, digits, `-`, `_`
/// and `.` (no `/`, `:`, `{` or `}`, which the backends' key layouts use).
pub fn validate_service_name(service: &str) -> Result<()> {
    if service.is_empty() {
        return Err(Error::invalid("service name is empty"));
    }
    if service.len() > MAX_SERVICE_NAME_LEN {
        return Err(Error::invalid(format!(
            "service name is {} bytes, over the limit of {MAX_SERVICE_NAME_LEN}",
            service.len()
        )));
    }
    if let Some(bad) = service
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(Error::invalid(format!(
            "service name {service:?} contains {bad:?}; use letters, digits, '-', '_' and '.'"
        )));
    }
    Ok(())
}

/// Checks an instance id: 1 to 256 bytes, no control characters and no `/`
/// (the etcd key layout uses it).
pub fn validate_instance_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::invalid("instance id is empty"));
    }
    if id.len() > MAX_INSTANCE_ID_LEN {
        return Err(Error::invalid(format!(
            "instance id is {} bytes, over the limit of {MAX_INSTANCE_ID_LEN}",
            id.len()
        )));
    }
    if let Some(bad) = id.chars().find(|c| c.is_control() || *c == '/') {
        return Err(Error::invalid(format!(
            "instance id {id:?} contains {bad:?}; control characters and '/' are not allowed"
        )));
    }
    Ok(())
}

/// Checks `host:port`: an IPv4 address, a bracketed IPv6 address or a DNS
/// name, and a port from 1 to 65535.
fn validate_addr(addr: &str) -> std::result::Result<(), &'static str> {
    if addr.parse::<std::net::SocketAddr>().is_ok() {
        return if addr.ends_with(":0") {
            Err("has port 0")
        } else {
            Ok(())
        };
    }
    let (host, port) = addr.rsplit_once(':').ok_or("is not host:port")?;
    let port: u16 = port.parse().map_err(|_| "has no valid port (1 to 65535)")?;
    if port == 0 {
        return Err("has port 0");
    }
    if host.is_empty() || host.len() > 253 {
        return Err("has no valid host");
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if host.split('.').all(label_ok) {
        Ok(())
    } else {
        Err("has a host that is neither an IP address nor a DNS name")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_instances_pass() {
        for addr in [
            "10.0.0.1:80",
            "[::1]:8080",
            "billing.internal:443",
            "localhost:1",
        ] {
            ServiceInstance::new("billing", "b-1", addr)
                .validate()
                .unwrap();
        }
    }

    #[test]
    fn bad_instances_are_invalid_arguments() {
        let bad = [
            ServiceInstance::new("", "b-1", "10.0.0.1:80"),
            ServiceInstance::new("a/b", "b-1", "10.0.0.1:80"),
            ServiceInstance::new("a{b}", "b-1", "10.0.0.1:80"),
            ServiceInstance::new("billing", "", "10.0.0.1:80"),
            ServiceInstance::new("billing", "x/y", "10.0.0.1:80"),
            ServiceInstance::new("billing", "b-1", "10.0.0.1"),
            ServiceInstance::new("billing", "b-1", "10.0.0.1:0"),
            ServiceInstance::new("billing", "b-1", "10.0.0.1:99999"),
            ServiceInstance::new("billing", "b-1", "bad host:80"),
            ServiceInstance::new("billing", "b-1", ":80"),
            ServiceInstance::new("billing", "b-1", "10.0.0.1:80").weight(0),
            ServiceInstance::new("billing", "b-1", "10.0.0.1:80").weight(MAX_WEIGHT + 1),
            ServiceInstance::new("billing", "b-1", "10.0.0.1:80").metadata("k", "v".repeat(20_000)),
        ];
        for instance in bad {
            let err = instance.validate().unwrap_err();
            assert!(
                matches!(err, Error::InvalidArgument(_)),
                "{instance:?}: {err}"
            );
        }
        ServiceInstance::new("billing", "b-1", "10.0.0.1:80")
            .weight(0)
            .status(InstanceStatus::Draining)
            .validate()
            .unwrap();
    }

    #[test]
    fn the_stored_form_round_trips_and_corruption_is_a_codec_error() {
        let i = ServiceInstance::new("billing", "b-1", "10.0.0.1:80")
            .tag("grpc")
            .metadata("a", "b")
            .zone("z1")
            .version("1");
        let back = ServiceInstance::decode(&i.encode().unwrap(), "k").unwrap();
        assert_eq!(back, i);
        let err = ServiceInstance::decode(b"{not json", "registry/billing/b-1").unwrap_err();
        assert!(matches!(err, Error::Codec { .. }), "{err}");
        assert!(err.to_string().contains("registry/billing/b-1"), "{err}");
    }
}
