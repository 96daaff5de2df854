//! `billing admin …`: what an operator needs to resolve a support ticket,
//! over the same gRPC API and tokens as every other client. Tables on a
//! terminal, the API's JSON with `--json`; amounts typed in currency units
//! are parsed exactly into micros ([`amount`]). `webhooks` holds the
//! `billing admin webhooks …` commands.

pub mod amount;
pub mod table;
mod view;
mod webhooks;

use anyhow::{Context as _, bail};
use billing_proto::v1 as pb;
use billing_proto::v1::billing_service_client::BillingServiceClient;
use clap::{Args, Subcommand};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};
use uuid::Uuid;

use self::amount::parse_units;

/// Connection and output options, then the command.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The service's address.
    #[arg(
        long,
        env = "BILLING_GRPC_ADDR",
        default_value = "127.0.0.1:50051",
        global = true
    )]
    addr: String,
    /// A bearer token (project_super_admin for changes; a customer_admin
    /// reads its own accounts).
    #[arg(long, env = "BILLING_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Print the API's JSON (proto field names) instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// TLS for an https:// address.
    #[command(flatten)]
    tls: AdminTlsArgs,
    #[command(subcommand)]
    command: AdminCommand,
}

/// `billing call`'s TLS settings, but for the client key's flag: `--key`
/// is the idempotency key of the commands that change money, so here the
/// client key is `--tls-key` (the variable is the same, BILLING_TLS_KEY).
#[derive(Clone, Debug, Default, clap::Args)]
struct AdminTlsArgs {
    /// For an https:// address: a PEM file of the CA certificate(s) to trust
    /// (default: the system's roots).
    #[arg(long = "ca", env = "BILLING_TLS_CA", global = true)]
    tls_ca: Option<std::path::PathBuf>,
    /// For an https:// address: a PEM client certificate, for a server that
    /// requires one (mutual TLS). Needs --tls-key.
    #[arg(
        long = "cert",
        env = "BILLING_TLS_CERT",
        requires = "tls_key",
        global = true
    )]
    tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of --cert.
    #[arg(
        long = "tls-key",
        env = "BILLING_TLS_KEY",
        requires = "tls_cert",
        global = true
    )]
    tls_key: Option<std::path::PathBuf>,
    /// For an https:// address: the name the server's certificate must carry
    /// (default: the address's host).
    #[arg(long, env = "BILLING_TLS_SERVER_NAME", global = true)]
    tls_server_name: Option<String>,
}

impl From<AdminTlsArgs> for crate::tls::ClientTlsArgs {
    fn from(args: AdminTlsArgs) -> Self {
        Self {
            tls_ca: args.tls_ca,
            tls_cert: args.tls_cert,
            tls_key: args.tls_key,
            tls_server_name: args.tls_server_name,
        }
    }
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// List accounts, optionally one customer's.
    Accounts {
        /// Only this customer's accounts.
        #[arg(long)]
        customer: Option<Uuid>,
        /// Accounts per page (at most 100).
        #[arg(long, default_value_t = 50)]
        limit: i32,
        /// The page after a previous listing (it prints the token).
        #[arg(long)]
        page_token: Option<String>,
    },
    /// An account's details and balance, in currency and in micros.
    Show { account_id: Uuid },
    /// An account's ledger, newest first.
    Ledger {
        account_id: Uuid,
        /// Entries per page (at most 100).
        #[arg(long, default_value_t = 20)]
        limit: i32,
        /// The page after a previous listing (it prints the token).
        #[arg(long)]
        page_token: Option<String>,
    },
    /// Add paid credit or tokens (a payment).
    Topup {
        account_id: Uuid,
        #[command(flatten)]
        amount: AmountArgs,
        /// Why (kept in the ledger as the entry's note). Required.
        #[arg(long)]
        reason: String,
        /// The payment's reference, if any (e.g. the processor's id).
        #[arg(long)]
        reference: Option<String>,
        /// The idempotency key; one is made and printed when absent. Pass
        /// the printed key to retry without paying twice.
        #[arg(long)]
        key: Option<String>,
    },
    /// Grant promotional credit: spent before paid credit, never paid out,
    /// optionally expiring.
    Promote {
        account_id: Uuid,
        /// Credit in currency units, exactly: 5.00.
        #[arg(long, conflicts_with = "micros", required_unless_present = "micros")]
        amount: Option<String>,
        /// Credit in micros.
        #[arg(long)]
        micros: Option<i64>,
        /// When what is left of it expires (RFC 3339, e.g.
        /// 2027-01-01T00:00:00Z); never when absent.
        #[arg(long)]
        expires: Option<prost_types::Timestamp>,
        /// Why (kept in the ledger as the entry's note). Required.
        #[arg(long)]
        reason: String,
        /// The campaign or ticket it comes from, if any.
        #[arg(long)]
        reference: Option<String>,
        /// The idempotency key; one is made and printed when absent.
        #[arg(long)]
        key: Option<String>,
    },
    /// Correct a balance up or down (a manual adjustment).
    Adjust {
        account_id: Uuid,
        #[command(flatten)]
        amount: AmountArgs,
        /// Adjust promotional credit instead of paid credit (taking it away
        /// removes it from the grants that expire first).
        #[arg(long)]
        promotional: bool,
        /// Why (kept in the ledger as the entry's note). Required.
        #[arg(long)]
        reason: String,
        /// The idempotency key; one is made and printed when absent.
        #[arg(long)]
        key: Option<String>,
    },
    /// Freeze an account: no new charges or holds.
    Freeze {
        account_id: Uuid,
        #[arg(long)]
        key: Option<String>,
    },
    /// Unfreeze an account.
    Unfreeze {
        account_id: Uuid,
        #[arg(long)]
        key: Option<String>,
    },
    /// A customer's webhooks and their deliveries.
    #[command(subcommand)]
    Webhooks(webhooks::WebhookCommand),
}

/// An amount of credit (in currency units or micros) and/or tokens. For
/// `adjust` they may be negative, in one direction at a time.
#[derive(Debug, Args)]
#[group(required = true, multiple = true)]
struct AmountArgs {
    /// Credit in currency units, exactly: 20.00, 0.0045 (at most 6 places).
    #[arg(long, conflicts_with = "micros", allow_negative_numbers = true)]
    amount: Option<String>,
    /// Credit in micros (1 unit = 1,000,000 micros).
    #[arg(long, allow_negative_numbers = true)]
    micros: Option<i64>,
    /// Plan tokens.
    #[arg(long, allow_negative_numbers = true)]
    tokens: Option<i64>,
}

impl AmountArgs {
    /// (credit micros, tokens).
    fn resolve(&self) -> anyhow::Result<(i64, i64)> {
        let credit = match (&self.amount, self.micros) {
            (Some(text), _) => parse_units(text).with_context(|| format!("--amount {text}"))?,
            (None, Some(micros)) => micros,
            (None, None) => 0,
        };
        Ok((credit, self.tokens.unwrap_or(0)))
    }
}

type Client = BillingServiceClient<InterceptedService<Channel, Bearer>>;

/// Sends the bearer token, if any, with every call.
#[derive(Debug, Clone)]
struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// Runs one admin command; a refused call is printed and exits 1.
pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    let AdminArgs {
        addr,
        token,
        json,
        tls,
        command,
    } = args;
    let mut client = connect(&addr, &tls.into(), token.as_deref()).await?;
    let out = view::Output { json };
    let result = match command {
        AdminCommand::Accounts {
            customer,
            limit,
            page_token,
        } => {
            let reply = client
                .list_billing_accounts(pb::ListBillingAccountsRequest {
                    page_size: limit,
                    page_token: page_token.unwrap_or_default(),
                    customer_id: customer.map(|c| c.to_string()).unwrap_or_default(),
                })
                .await;
            reply.map(|r| out.accounts(&r.into_inner()))
        }
        AdminCommand::Show { account_id } => show(&mut client, &out, account_id).await,
        AdminCommand::Ledger {
            account_id,
            limit,
            page_token,
        } => ledger(&mut client, &out, account_id, limit, page_token).await,
        AdminCommand::Topup {
            account_id,
            amount,
            reason,
            reference,
            key,
        } => {
            let (credit, tokens) = amount.resolve()?;
            if credit < 0 || tokens < 0 {
                bail!("a top-up adds: use `billing admin adjust` to take credit away");
            }
            let payment = pb::AddBalanceRequest {
                account_id: account_id.to_string(),
                amount_credit: credit,
                amount_token: tokens,
                reference_type: pb::ReferenceType::Payment.into(),
                reference_id: reference.unwrap_or_default(),
                note: reason,
                ..Default::default()
            };
            add_balance(&mut client, &out, &Key::new(key), payment).await
        }
        AdminCommand::Promote {
            account_id,
            amount,
            micros,
            expires,
            reason,
            reference,
            key,
        } => {
            let credit = match (&amount, micros) {
                (Some(text), _) => parse_units(text).with_context(|| format!("--amount {text}"))?,
                (None, micros) => micros.unwrap_or(0),
            };
            let grant = pb::AddBalanceRequest {
                account_id: account_id.to_string(),
                amount_credit: credit,
                reference_type: pb::ReferenceType::Promotion.into(),
                reference_id: reference.unwrap_or_default(),
                note: reason,
                bucket: pb::BalanceBucket::Promotional.into(),
                expires_at: expires,
                ..Default::default()
            };
            add_balance(&mut client, &out, &Key::new(key), grant).await
        }
        AdminCommand::Adjust {
            account_id,
            amount,
            promotional,
            reason,
            key,
        } => {
            let bucket = if promotional {
                pb::BalanceBucket::Promotional
            } else {
                pb::BalanceBucket::Paid
            };
            adjust(
                &mut client,
                &out,
                account_id,
                (&amount, bucket),
                reason,
                Key::new(key),
            )
            .await?
        }
        AdminCommand::Freeze { account_id, key } => {
            set_status(
                &mut client,
                &out,
                account_id,
                pb::AccountStatus::Frozen,
                key,
            )
            .await
        }
        AdminCommand::Webhooks(command) => webhooks::run(&mut client, &out, command).await,
        AdminCommand::Unfreeze { account_id, key } => {
            set_status(
                &mut client,
                &out,
                account_id,
                pb::AccountStatus::Active,
                key,
            )
            .await
        }
    };
    match result {
        Ok(printed) => printed,
        Err(status) => {
            eprintln!("{}", crate::call::describe(&status));
            std::process::exit(1);
        }
    }
}

async fn connect(
    addr: &str,
    tls: &crate::tls::ClientTlsArgs,
    token: Option<&str>,
) -> anyhow::Result<Client> {
    let channel = crate::tls::client::endpoint(addr, tls)?
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let header = token
        .map(|t| format!("Bearer {t}").parse())
        .transpose()
        .context("the token is not printable ASCII")?;
    Ok(BillingServiceClient::with_interceptor(
        channel,
        Bearer(header),
    ))
}

/// An idempotency key: the operator's, or one made for them (and printed so
/// that a retry can reuse it).
#[derive(Debug)]
struct Key {
    value: String,
    made: bool,
}

impl Key {
    fn new(given: Option<String>) -> Self {
        match given {
            Some(value) => Self { value, made: false },
            None => Self {
                value: format!("admin-{}", Uuid::now_v7()),
                made: true,
            },
        }
    }
}

type Printed = anyhow::Result<()>;

async fn show(client: &mut Client, out: &view::Output, id: Uuid) -> Result<Printed, Status> {
    let account = client
        .get_billing_account(pb::GetBillingAccountRequest { id: id.to_string() })
        .await?
        .into_inner();
    let balance = client
        .get_balance(pb::GetBalanceRequest {
            account_id: id.to_string(),
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(out.show(&account, &balance))
}

async fn ledger(
    client: &mut Client,
    out: &view::Output,
    id: Uuid,
    limit: i32,
    page_token: Option<String>,
) -> Result<Printed, Status> {
    // The account's currency, to show amounts in it.
    let account = client
        .get_billing_account(pb::GetBillingAccountRequest { id: id.to_string() })
        .await?
        .into_inner();
    // The ledger is a read model: ask it to catch up with the account as
    // just read, so an operator sees the change they just made.
    let mut request = pb::ListTransactionsRequest {
        account_id: id.to_string(),
        limit,
        page_token: page_token.unwrap_or_default(),
        min_version: account.version,
        ..Default::default()
    };
    let page = match client.list_transactions(request.clone()).await {
        Err(status) if status.code() == tonic::Code::Unavailable => {
            eprintln!(
                "note: the ledger has not caught up with version {} yet ({}); showing what it has",
                account.version,
                status.message()
            );
            request.min_version = 0;
            client.list_transactions(request).await?
        }
        page => page?,
    }
    .into_inner();
    Ok(out.ledger(&account, &page))
}

async fn adjust(
    client: &mut Client,
    out: &view::Output,
    id: Uuid,
    (amount, bucket): (&AmountArgs, pb::BalanceBucket),
    reason: String,
    key: Key,
) -> anyhow::Result<Result<Printed, Status>> {
    let (credit, tokens) = amount.resolve()?;
    let adding = credit > 0 || tokens > 0;
    let taking = credit < 0 || tokens < 0;
    if adding && taking {
        bail!("adjust one direction at a time: credit and tokens both up, or both down");
    }
    if !adding && !taking {
        bail!("an adjustment of nothing: give a non-zero --amount, --micros or --tokens");
    }
    let reply = if adding {
        let up = pb::AddBalanceRequest {
            account_id: id.to_string(),
            amount_credit: credit,
            amount_token: tokens,
            reference_type: pb::ReferenceType::ManualAdjustment.into(),
            note: reason,
            bucket: bucket.into(),
            ..Default::default()
        };
        add_balance(client, out, &key, up).await
    } else {
        // `checked_neg`: -i64::MIN has no i64; the service would refuse
        // the amount anyway, so refuse it here with the same words.
        let (Some(credit), Some(tokens)) = (credit.checked_neg(), tokens.checked_neg()) else {
            bail!("the amount is too large");
        };
        client
            .subtract_balance(pb::SubtractBalanceRequest {
                account_id: id.to_string(),
                amount_credit: credit,
                amount_token: tokens,
                reference_type: pb::ReferenceType::ManualAdjustment.into(),
                idempotency_key: key.value.clone(),
                note: reason,
                bucket: bucket.into(),
                ..Default::default()
            })
            .await
            .map(|r| {
                let r = r.into_inner();
                out.changed(&key, &r, "SubtractBalanceResponse", r.account.as_ref())
            })
    };
    Ok(reply)
}

/// Sends `request` with `key` and prints the account as it now stands.
async fn add_balance(
    client: &mut Client,
    out: &view::Output,
    key: &Key,
    request: pb::AddBalanceRequest,
) -> Result<Printed, Status> {
    let reply = client
        .add_balance(pb::AddBalanceRequest {
            idempotency_key: key.value.clone(),
            ..request
        })
        .await?
        .into_inner();
    Ok(out.changed(key, &reply, "AddBalanceResponse", reply.account.as_ref()))
}

async fn set_status(
    client: &mut Client,
    out: &view::Output,
    id: Uuid,
    status: pb::AccountStatus,
    key: Option<String>,
) -> Result<Printed, Status> {
    let key = Key::new(key);
    let account = client
        .update_billing_account(pb::UpdateBillingAccountRequest {
            id: id.to_string(),
            status: Some(status.into()),
            idempotency_key: key.value.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(out.changed(&key, &account, "BillingAccount", Some(&account)))
}
