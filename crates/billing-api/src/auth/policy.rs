//! Who may do what: the roles, the principal a verified token becomes, and
//! the per-RPC policy (deny by default).

use billing_store::Actor;
use uuid::Uuid;

use super::LEEWAY_SECONDS;

/// Who may do what.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Everything.
    ProjectSuperAdmin,
    /// Call control: rating, holds, charges, and reading accounts.
    Service,
    /// Reads its own customer's account, balance and ledger, and manages
    /// its own customer's webhooks.
    CustomerAdmin,
}

impl Role {
    pub const ALL: [Self; 3] = [Self::ProjectSuperAdmin, Self::Service, Self::CustomerAdmin];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ProjectSuperAdmin => "project_super_admin",
            Self::Service => "service",
            Self::CustomerAdmin => "customer_admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The token's `sub`.
    pub subject: String,
    pub role: Role,
    /// Required for customer admins: the customer whose accounts they read.
    pub customer_id: Option<Uuid>,
    /// The token's `exp` (seconds since the epoch): a long-lived call (a
    /// `WatchAccount` stream) ends when its token does.
    pub expires_at: u64,
}

impl Principal {
    /// The actor recorded on the events this principal causes.
    pub fn actor(&self) -> Actor {
        Actor {
            principal: self.subject.clone(),
            role: self.role.as_str().to_owned(),
        }
    }

    /// How long the token stays valid from now, with the leeway every
    /// call gets (zero once it has expired).
    pub fn valid_for(&self) -> std::time::Duration {
        let now = jsonwebtoken::get_current_timestamp();
        std::time::Duration::from_secs(
            self.expires_at
                .saturating_add(LEEWAY_SECONDS)
                .saturating_sub(now),
        )
    }

    /// Whether this principal may read or act on an account owned by
    /// `owner` (its stored customer). Only customer admins are restricted.
    pub fn may_access(&self, owner: Uuid) -> bool {
        match self.role {
            Role::ProjectSuperAdmin | Role::Service => true,
            Role::CustomerAdmin => self.customer_id == Some(owner),
        }
    }
}

/// The webhook RPCs: a customer admin manages its own customer's webhooks
/// (the handlers check the customer); call control has no part in them.
pub fn is_webhook_rpc(rpc: &str) -> bool {
    matches!(
        rpc,
        "CreateWebhook"
            | "GetWebhook"
            | "ListWebhooks"
            | "UpdateWebhook"
            | "DeleteWebhook"
            | "RotateWebhookSecret"
            | "ListWebhookDeliveries"
            | "RetryWebhookDelivery"
            | "ReplayWebhook"
    )
}

/// The RPCs each role may call; anything not listed is denied. Customer
/// admins are further limited to their own account by the handlers.
pub fn permits(role: Role, rpc: &str) -> bool {
    match role {
        Role::ProjectSuperAdmin => true,
        Role::Service => matches!(
            rpc,
            "Rate"
                | "Reserve"
                | "Extend"
                | "Commit"
                | "Release"
                | "Debit"
                | "GetBillingAccount"
                | "GetBalance"
                | "EstimateCost"
                | "ComparePlans"
                | "WatchAccount"
        ),
        Role::CustomerAdmin => {
            matches!(
                rpc,
                "GetBillingAccount"
                    | "GetBalance"
                    | "ListTransactions"
                    | "Rate"
                    | "EstimateCost"
                    | "ComparePlans"
                    | "WatchAccount"
            ) || is_webhook_rpc(rpc)
        }
    }
}
