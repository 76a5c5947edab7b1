//! Who is calling: the identity and roles of a gRPC request, as established
//! by the listener it arrived on (a client certificate on mTLS listeners, the
//! local user on plaintext loopback listeners).

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A role: what a principal may do. See `docs/authorization.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Pushes segments, only for the cameras bound to its certificate.
    Camera,
    /// Lists, reads and exports footage.
    Operator,
    /// Places legal holds and exports evidence.
    Investigator,
    /// Releases legal holds.
    Supervisor,
    /// Reads compliance reports and the audit log.
    Auditor,
    /// Sets policies, runs sweeps, manages keys and the cluster.
    Admin,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 6] = [
        Role::Camera,
        Role::Operator,
        Role::Investigator,
        Role::Supervisor,
        Role::Auditor,
        Role::Admin,
    ];

    /// The role's name as written in configs and docs.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Camera => "camera",
            Role::Operator => "operator",
            Role::Investigator => "investigator",
            Role::Supervisor => "supervisor",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        }
    }

    /// Parses a role name.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which cameras a caller may ingest for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CameraScope {
    /// Any camera (the local loopback user).
    Any,
    /// Only these camera ids (bound to the client certificate).
    Only(BTreeSet<String>),
}

impl CameraScope {
    /// Whether `camera` is within scope.
    pub fn allows(&self, camera: &str) -> bool {
        match self {
            CameraScope::Any => true,
            CameraScope::Only(ids) => ids.contains(camera),
        }
    }
}

/// The authenticated caller of one request. The listener's gate inserts it
/// into the request's extensions; handlers read it with [`Caller::of`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Who: the certificate's principal, or `local` on a plaintext loopback listener.
    pub principal: String,
    /// The listener (network segment) the request arrived on.
    pub listener: String,
    /// What the caller may do.
    pub roles: BTreeSet<Role>,
    /// Cameras the caller may ingest for.
    pub cameras: CameraScope,
    /// The client certificate's serial number (hex), when there is one.
    pub serial: Option<String>,
}

impl Caller {
    /// The local user of a plaintext loopback listener: every role, any camera.
    pub fn local(listener: &str) -> Caller {
        Caller {
            principal: "local".to_string(),
            listener: listener.to_string(),
            roles: Role::ALL.into_iter().collect(),
            cameras: CameraScope::Any,
            serial: None,
        }
    }

    /// The caller of `request`. Requests that did not pass a gate (in-process
    /// calls in tests) are the local user.
    pub fn of<T>(request: &tonic::Request<T>) -> Caller {
        request
            .extensions()
            .get::<Caller>()
            .cloned()
            .unwrap_or_else(|| Caller::local("in-process"))
    }

    /// Whether the caller holds `role`.
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// The principal to record: on a plaintext loopback listener a principal
    /// named in the request is kept (as `local:NAME`), since there is no
    /// certificate to say otherwise; an authenticated identity always wins.
    pub fn recorded_principal(&self, claimed: &str) -> String {
        if self.serial.is_none() && !claimed.is_empty() {
            format!("{}:{claimed}", self.principal)
        } else {
            self.principal.clone()
        }
    }
}
