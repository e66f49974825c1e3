//! The AWS request budget: one token bucket per AWS account, region and call family,
//! shared by every controller and every ClusterConnection of the process that lands in
//! that account and region, with a fair share per namespace (see
//! [`capstan_core::budget`] for the mechanics).
//!
//! AWS throttles per account and region, so that is what a budget is keyed on:
//! 1. the connection's declared `accountId`, when it sets one (Capstan checks that the
//!    credentials land there before the connection is Ready);
//! 2. else the account of the connection's `roleArn`, when it assumes a role (that is
//!    where the calls are made and throttled);
//! 3. else the account STS GetCallerIdentity reported for the connection, when this
//!    process has checked it ([`check_identity`](crate::check_identity) records it);
//! 4. else the connection's name: two connections that name no account and were never
//!    checked each get their own budget (a conservative fallback: declaring `accountId`
//!    is what lets Capstan share one budget between them).
//!
//! The families and their default sustained rates (requests per second, with the
//! burst in brackets) stay under what AWS publishes per account and region, leaving
//! most of it to the teams that share the account:
//!
//! | family | calls | default | AWS |
//! |---|---|---|---|
//! | `ecs-read` | DescribeServices | 10 (20) | ECS request throttling: service reads are a shared token bucket per account and region |
//! | `ecs-write` | UpdateService (scaling, forced deployments) | 2 (4) | ECS: UpdateService has a sustained rate of 5/s |
//! | `cloudwatch-read` | GetMetricData | 10 (10) | CloudWatch: GetMetricData 50 TPS |
//! | `secretsmanager-read` | DescribeSecret, GetSecretValue, ListSecretVersionIds | 20 (40) | Secrets Manager API quotas |
//! | `secretsmanager-write` | CreateSecret, PutSecretValue, UpdateSecretVersionStage | 5 (10) | Secrets Manager API quotas |
//! | `autoscaling` | Application Auto Scaling (all calls) | 5 (10) | Application Auto Scaling API quotas |
//! | `rds-read` | DescribeDBInstances, DescribeDBClusters | 5 (10) | RDS API throttling: a token bucket per account and region |
//! | `rds-write` | ModifyDBInstance, ModifyDBCluster, AddTagsToResource | 1 (2) | RDS API throttling |
//! | `iam` | GetUser, ListAccessKeys, CreateAccessKey, UpdateAccessKey, DeleteAccessKey, and STS GetCallerIdentity testing a key | 2 (4) | IAM API throttling: one control plane per account, shared by every region |
//!
//! `capstan run --aws-budget family=RATE[/BURST],...` overrides them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use capstan_core::budget::{Budgets, Rate};
use capstan_core::connection::AwsConnection;

/// ECS reads (DescribeServices, DescribeTaskDefinition, ListTaskDefinitions, ListTasks,
/// DescribeTasks).
pub const ECS_READ: &str = "ecs-read";
/// ECS writes (UpdateService, RegisterTaskDefinition).
pub const ECS_WRITE: &str = "ecs-write";
/// ECR reads (DescribeImages).
pub const ECR_READ: &str = "ecr-read";
/// CloudWatch GetMetricData.
pub const CLOUDWATCH_READ: &str = "cloudwatch-read";
/// Secrets Manager reads.
pub const SECRETS_MANAGER_READ: &str = "secretsmanager-read";
/// Secrets Manager writes.
pub const SECRETS_MANAGER_WRITE: &str = "secretsmanager-write";
/// Application Auto Scaling.
pub const AUTOSCALING: &str = "autoscaling";
/// RDS reads (DescribeDBInstances, DescribeDBClusters).
pub const RDS_READ: &str = "rds-read";
/// RDS writes (ModifyDBInstance, ModifyDBCluster, AddTagsToResource).
pub const RDS_WRITE: &str = "rds-write";
/// IAM access key calls, and STS GetCallerIdentity testing a key.
pub const IAM: &str = "iam";

/// Every family, with its default rate.
pub fn default_rates() -> BTreeMap<String, Rate> {
    let r = |per_second: f64, burst: u32| Rate { per_second, burst };
    BTreeMap::from([
        (ECS_READ.to_owned(), r(10.0, 20)),
        (ECS_WRITE.to_owned(), r(2.0, 4)),
        (ECR_READ.to_owned(), r(5.0, 10)),
        (CLOUDWATCH_READ.to_owned(), r(10.0, 10)),
        (SECRETS_MANAGER_READ.to_owned(), r(20.0, 40)),
        (SECRETS_MANAGER_WRITE.to_owned(), r(5.0, 10)),
        (AUTOSCALING.to_owned(), r(5.0, 10)),
        (RDS_READ.to_owned(), r(5.0, 10)),
        (RDS_WRITE.to_owned(), r(1.0, 2)),
        (IAM.to_owned(), r(2.0, 4)),
    ])
}

/// The default rates with `overrides` (`family=RATE[/BURST]` each) applied; refuses an
/// unknown family or a bad rate.
pub fn rates_with(overrides: &[String]) -> Result<BTreeMap<String, Rate>, String> {
    let mut rates = default_rates();
    for o in overrides.iter().filter(|o| !o.trim().is_empty()) {
        let (family, rate) = o
            .split_once('=')
            .ok_or_else(|| format!("{o:?}: expected family=RATE[/BURST]"))?;
        let family = family.trim();
        let slot = rates.get_mut(family).ok_or_else(|| {
            format!(
                "{family:?} is not a budget family (one of {})",
                default_rates().into_keys().collect::<Vec<_>>().join(", ")
            )
        })?;
        *slot = Rate::parse(rate).map_err(|e| format!("{family}: {e}"))?;
    }
    Ok(rates)
}

fn identities() -> &'static Mutex<HashMap<String, String>> {
    static ACCOUNTS: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    ACCOUNTS.get_or_init(Default::default)
}

/// Records the account STS reported for `connection`.
pub(crate) fn remember_account(connection: &str, account: &str) {
    if !account.is_empty() {
        identities()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(connection.to_owned(), account.to_owned());
    }
}

/// The budget scope of a connection: `account/region` (see the module docs for where
/// the account comes from), or `connection:name/region` when the account is unknown.
pub fn scope_of(connection: &str, aws: &AwsConnection) -> String {
    let role_account = aws
        .role_arn
        .as_deref()
        .and_then(|arn| arn.split(':').nth(4))
        .filter(|a| a.len() == 12 && a.bytes().all(|b| b.is_ascii_digit()))
        .map(str::to_owned);
    let known = aws.account_id.clone().or(role_account).or_else(|| {
        identities()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(connection)
            .cloned()
    });
    match known {
        Some(account) => format!("{account}/{}", aws.region),
        None => format!("connection:{connection}/{}", aws.region),
    }
}

/// The budget a client spends: the process's budgets and the scope of its connection.
/// The default spends nothing (no limit).
#[derive(Clone, Debug, Default)]
pub struct Budget(Option<(Arc<Budgets>, Arc<str>)>);

impl Budget {
    /// The budget of `connection` in `budgets`.
    pub fn new(budgets: Arc<Budgets>, connection: &str, aws: &AwsConnection) -> Self {
        Self(Some((budgets, Arc::from(scope_of(connection, aws)))))
    }

    /// Waits for a token of `family`, queued under the caller's namespace
    /// ([`capstan_core::budget::in_namespace`]).
    pub async fn acquire(&self, family: &str) {
        if let Some((budgets, scope)) = &self.0 {
            budgets.acquire(scope, family).await;
        }
    }

    /// The scope this budget spends from, if any.
    pub fn scope(&self) -> Option<&str> {
        self.0.as_ref().map(|(_, s)| &**s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(account: Option<&str>) -> AwsConnection {
        AwsConnection {
            region: "eu-west-1".into(),
            account_id: account.map(str::to_owned),
            role_arn: None,
            external_id: None,
            endpoint_url: None,
            credentials_secret_ref: None,
        }
    }

    #[test]
    fn connections_in_one_account_share_a_scope() {
        assert_eq!(
            scope_of("a", &conn(Some("123456789012"))),
            scope_of("b", &conn(Some("123456789012")))
        );
        assert_eq!(scope_of("c", &conn(None)), "connection:c/eu-west-1");
        remember_account("d", "210987654321");
        assert_eq!(scope_of("d", &conn(None)), "210987654321/eu-west-1");
        let mut role = conn(None);
        role.role_arn = Some("arn:aws:iam::333333333333:role/capstan".into());
        assert_eq!(scope_of("e", &role), "333333333333/eu-west-1");
    }

    #[test]
    fn overrides_replace_defaults_and_refuse_unknown_families() {
        let rates = rates_with(&["ecs-write=1/2".into()]).expect("rates");
        assert_eq!(
            rates[ECS_WRITE],
            Rate {
                per_second: 1.0,
                burst: 2
            }
        );
        assert_eq!(rates[ECS_READ], default_rates()[ECS_READ]);
        assert!(rates_with(&["ecs=1".into()]).is_err());
        assert!(rates_with(&["ecs-read".into()]).is_err());
        assert!(rates_with(&["ecs-read=0".into()]).is_err());
    }
}
