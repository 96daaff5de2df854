//! Account views folded from an earlier view: what lets the store keep the
//! whole view on one event in many (`billing_store`'s view snapshots) and
//! give every other event's view exactly as it was recorded.
//!
//! A view holds everything of the account but its holds and its chain head
//! (neither of which a view shows: the reserved amounts are recorded on
//! every event), and of its promotional grants only the live ones. That is
//! enough to fold on: `evolve` ignores a hold or a grant it does not find
//! (a commit of a hold made before the view, an expiry recorded for a grant
//! that had already stopped counting), and a grant that was not live at the
//! view's instant is not live at any later one. The balances an event
//! records (`Balances`) then give the reserved and available amounts as
//! the account's holds made them.

use chrono::{DateTime, Utc};

use crate::account::{Account, AccountView, Balances};
use crate::event::Event;
use crate::money::Overflow;

impl Account {
    /// The account a view shows, without holds or chain head, and with only
    /// the grants live at the view's instant: a base to fold later events
    /// on with [`AccountView::after`].
    pub fn from_view(view: &AccountView) -> Self {
        Self {
            id: view.id,
            customer_id: view.customer_id,
            name: view.name.clone(),
            detail: view.detail.clone(),
            plan_type: view.plan_type,
            plan_status: view.plan_status,
            status: view.status,
            currency: view.currency.clone(),
            balance_credit: view.balance_credit,
            balance_token: view.balance_token,
            credit_limit: view.credit_limit,
            credit_limit_type: view.credit_limit_type,
            is_postpaid: view.is_postpaid,
            low_balance_threshold: view.low_balance_threshold,
            payment_type: view.payment_type.clone(),
            payment_method: view.payment_method.clone(),
            tm_last_topup: view.tm_last_topup,
            tm_next_topup: view.tm_next_topup,
            tm_create: view.tm_create,
            tm_update: view.tm_update,
            tm_delete: view.tm_delete,
            version: view.version,
            holds: Default::default(),
            chain_head: None,
            promotions: view.promotional_grants.clone(),
        }
    }

    /// This account's view after an event that happened at `at` and
    /// recorded `balances`: the view as the command that made the event
    /// showed it, whether or not this account knows the holds.
    pub fn view_recorded(
        &self,
        at: DateTime<Utc>,
        balances: Balances,
    ) -> Result<AccountView, Overflow> {
        let mut view = self.view(at)?;
        view.balance_credit = balances.balance_credit;
        view.balance_token = balances.balance_token;
        view.reserved_credit = balances.reserved_credit;
        view.reserved_token = balances.reserved_token;
        view.available_credit = balances.available_credit;
        view.available_token = balances.available_token;
        view.over_limit = balances.available_credit.is_negative();
        Ok(view)
    }
}

impl AccountView {
    /// The view after the account's next event, `event`, which happened at
    /// `at` and recorded `balances`: equal to the view the command that
    /// made it recorded.
    pub fn after(
        &self,
        event: &Event,
        at: DateTime<Utc>,
        balances: Balances,
    ) -> Result<AccountView, Overflow> {
        let mut account = Account::from_view(self);
        account.apply(event, at)?;
        account.view_recorded(at, balances)
    }
}
