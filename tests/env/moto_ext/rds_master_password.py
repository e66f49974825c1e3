"""RDS master passwords that really change, on a local PostgreSQL, after a delay.

Real RDS: ModifyDBInstance (or ModifyDBCluster for Aurora) with MasterUserPassword and
ApplyImmediately changes the master user's password on the running database. The change
is not instant: the instance reports DBInstanceStatus `resetting-master-credentials`
(a cluster: Status `resetting-master-credentials`) and PendingModifiedValues with
MasterUserPassword `****` until it is applied, then `available` with nothing pending.
While it is not `available`, another ModifyDBInstance is refused with
InvalidDBInstanceState (InvalidDBClusterStateFault for a cluster).

moto instead: runs no database; the new password is stored in moto's memory at once,
the status stays `available` and nothing is pending, so a test cannot tell whether a
caller waited, nor log in with the new password anywhere.

The model: an instance or cluster tagged `capstan.dev/moto-postgres` = `HOST:PORT`
(a PostgreSQL the test started) is mapped to that server, whose role named by
MasterUsername plays the master user. RDS changes that password as its own
administrator (`rdsadmin`); the model plays it with the login kept in the emulator's
Secrets Manager secret named by the tag `capstan.dev/moto-postgres-admin` (JSON with
`username` and `password`, same account and region), so no password is in a tag. A password change is held pending for
`capstan.dev/moto-apply-seconds` (tag, a number of seconds, 0 when absent): meanwhile
the status is `resetting-master-credentials`, PendingModifiedValues carries
MasterUserPassword `****`, and another password change is refused as above. The first
DescribeDBInstances/DescribeDBClusters after the delay applies it: it logs in to the
mapped server as that administrator and runs `ALTER ROLE <master> PASSWORD ...`
(psql from `CAPSTAN_POSTGRES_BIN` or the newest `/usr/lib/postgresql/<major>/bin`, the
statement on stdin, the administrator's password in the environment), then reports
`available`. A failed apply stays pending and is logged to
moto's log (a test then sees the instance never become available). Instances and
clusters without the tag keep moto's behaviour. State lives on moto's own objects, so
it is keyed by identifier; the wall clock decides when a change applies.

Unlike the other extensions this one opens a connection (psql's) to a server the test
named, only when a caller asks for the instance.

Relied on by: the RDS master password tests (crates/capstan/tests/secret_rotation_rds.rs).
"""

import glob
import json
import os
import subprocess
import sys
import time

from moto.rds import models as rds_models
from moto.rds.exceptions import RDSClientError
from moto.secretsmanager.models import secretsmanager_backends

TAG_SERVER = "capstan.dev/moto-postgres"
TAG_ADMIN = "capstan.dev/moto-postgres-admin"
TAG_DELAY = "capstan.dev/moto-apply-seconds"
RESETTING = "resetting-master-credentials"


def _tags(obj):
    return {t["Key"]: t["Value"] for t in (getattr(obj, "tags", None) or [])}


def _psql():
    base = os.environ.get("CAPSTAN_POSTGRES_BIN")
    if base:
        return os.path.join(base, "psql")
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/psql"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    if not found:
        raise RuntimeError("rds_master_password: no psql under /usr/lib/postgresql")
    return found[-1]


def _quote_ident(name):
    return '"' + name.replace('"', '""') + '"'


def _quote_literal(value):
    return "'" + value.replace("'", "''") + "'"


def _apply(obj, kind, ident):
    """Applies the pending password on the mapped server; True when it is applied."""
    pending = getattr(obj, "_capstan_pending", None)
    if pending is None:
        return True
    password, apply_at = pending
    if time.time() < apply_at:
        return False
    tags = _tags(obj)
    host, _, port = tags[TAG_SERVER].rpartition(":")
    try:
        sm = secretsmanager_backends[obj.account_id][obj.region]
        admin = json.loads(sm.get_secret_value(tags[TAG_ADMIN], None, None)["SecretString"])
    except Exception as e:  # a test that mapped the instance without its admin login
        print(
            f"rds_master_password: {kind} {ident}: no admin login in the secret named by "
            f"tag {TAG_ADMIN}: {type(e).__name__}",
            file=sys.stderr,
            flush=True,
        )
        return False
    user = obj.master_username
    statement = f"ALTER ROLE {_quote_ident(user)} PASSWORD {_quote_literal(password)};\n"
    env = dict(os.environ, PGPASSWORD=admin["password"], PGCONNECT_TIMEOUT="5")
    run = subprocess.run(
        [_psql(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", host, "-p", port,
         "-U", admin["username"], "-d", "postgres"],
        input=statement,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    if run.returncode != 0:
        # psql's message names the server and the role, never the statement's value.
        print(
            f"rds_master_password: {kind} {ident}: applying the password on "
            f"{host}:{port} failed: {run.stderr.strip()}",
            file=sys.stderr,
            flush=True,
        )
        return False
    obj._capstan_pending = None
    # moto keeps the password write-only behind a property; the model reads its field.
    obj._master_user_password = password
    return True


def _report(obj, status_attr):
    """Status and pending values as real RDS reports them."""
    if getattr(obj, "_capstan_pending", None) is not None:
        setattr(obj, status_attr, RESETTING)
        obj.pending_modified_values = {"MasterUserPassword": "****"}
    elif getattr(obj, status_attr) == RESETTING:
        setattr(obj, status_attr, "available")
        obj.pending_modified_values = None


def _hold(obj, kind, ident, password, not_available_code):
    """Holds a password change of a mapped object pending; None when not mapped."""
    tags = _tags(obj)
    if TAG_SERVER not in tags:
        return None
    if getattr(obj, "_capstan_pending", None) is not None:
        raise RDSClientError(
            not_available_code,
            f"{kind} {ident} is not in available state ({RESETTING}).",
        )
    delay = float(tags.get(TAG_DELAY, "0") or 0)
    obj._capstan_pending = (password, time.time() + delay)
    return obj


# Instances.

_modify_instance = rds_models.RDSBackend.modify_db_instance
_describe_instances = rds_models.RDSBackend.describe_db_instances


def modify_db_instance(self, db_instance_identifier, db_kwargs):
    password = db_kwargs.get("master_user_password")
    if password is not None:
        db = _describe_instances(self, db_instance_identifier)[0]
        if _hold(db, "DB instance", db_instance_identifier, password,
                 "InvalidDBInstanceState") is not None:
            db_kwargs = dict(db_kwargs)
            db_kwargs.pop("master_user_password")
    out = _modify_instance(self, db_instance_identifier, db_kwargs)
    _report(out, "status")
    return out


def describe_db_instances(self, db_instance_identifier=None, filters=None):
    out = _describe_instances(self, db_instance_identifier, filters)
    for db in out:
        if TAG_SERVER in _tags(db):
            _apply(db, "DB instance", db.db_instance_identifier)
            _report(db, "status")
    return out


rds_models.RDSBackend.modify_db_instance = modify_db_instance
rds_models.RDSBackend.describe_db_instances = describe_db_instances

# Aurora clusters.

_modify_cluster = rds_models.RDSBackend.modify_db_cluster
_describe_clusters = rds_models.RDSBackend.describe_db_clusters


def modify_db_cluster(self, kwargs):
    password = kwargs.get("master_user_password")
    ident = kwargs.get("db_cluster_identifier")
    if password is not None and ident:
        cluster = _describe_clusters(self, db_cluster_identifier=ident)[0]
        if _hold(cluster, "DB cluster", ident, password,
                 "InvalidDBClusterStateFault") is not None:
            kwargs = dict(kwargs)
            kwargs.pop("master_user_password")
    out = _modify_cluster(self, kwargs)
    _report(out, "status")
    return out


def describe_db_clusters(self, *args, **kwargs):
    out = _describe_clusters(self, *args, **kwargs)
    for cluster in out:
        if TAG_SERVER in _tags(cluster):
            _apply(cluster, "DB cluster", cluster.db_cluster_identifier)
            _report(cluster, "status")
    return out


rds_models.RDSBackend.modify_db_cluster = modify_db_cluster
rds_models.RDSBackend.describe_db_clusters = describe_db_clusters
