"""ECS services whose tasks start and whose deployments complete.

Real ECS: after CreateService or an UpdateService that changes desiredCount, the
scheduler starts (or stops) tasks, so runningCount follows desiredCount after the tasks'
start-up time. UpdateService with forceNewDeployment=true (or a new task definition)
creates a new PRIMARY deployment with rolloutState IN_PROGRESS, the previous one becomes
ACTIVE until its tasks are replaced, and then the new one is COMPLETED and the old one
goes away.

moto instead: CreateService sets runningCount to $MOTO_ECS_SERVICE_RUNNING (0 by
default) for ever; UpdateService(desiredCount) sets runningCount at once but leaves the
deployment's counts and rolloutState as they were at creation; forceNewDeployment only
renames the deployment. Nothing ever progresses.

The model: each service has a task start-up time, read from its tag
`capstan.dev/moto-task-start-seconds` (a number of seconds; 0 when absent). Until that
long after the last change (create, a desiredCount change, a forced deployment),
DescribeServices and UpdateService report runningCount as it was before the change,
pendingCount as the difference, and the PRIMARY deployment IN_PROGRESS (a forced
deployment keeps the previous one as ACTIVE meanwhile); afterwards runningCount equals
desiredCount and the PRIMARY deployment is the only one, COMPLETED. The state lives on
moto's own service object, so it is keyed by cluster and service name; time is the wall
clock, so a test sees the same thing on every read.

Failing images. Real ECS: a task whose essential container exits non-zero stops
(stoppedReason "Essential container in task exited", the container's exitCode), and one
that fails its container health check is stopped by the scheduler (stoppedReason "Task
failed container health checks", healthStatus UNHEALTHY); the scheduler keeps starting
replacements, so the new deployment never completes while the previous one keeps serving.
Tasks a service starts carry startedBy = the deployment's id. The deployment circuit
breaker, when enabled, counts tasks that fail to start or fail health checks (not tasks
that ran and then exited), and sets the deployment FAILED after max(3, min(200,
ceil(desiredCount / 2))) of them. moto runs no task and has none of this.

The model: the image of each container of the PRIMARY deployment's task definition is
looked up; an image carries a failure marker when its reference contains
`moto-exit-1` or `moto-unhealthy`, or when it names (by tag or digest) an image in the
emulator's ECR whose manifest has the annotation `capstan.dev/moto-behaviour` set to
`exit-1` or `unhealthy` (a digest pins the marker, as it pins real content). For such a
deployment one task stops every `capstan.dev/moto-task-fail-seconds` (service tag, 1 s
by default) after the deployment started: a moto Task, started by the deployment,
desiredStatus and lastStatus STOPPED, with the exit code (1, or 137 after a failed health
check), health status and stopped reason above. Its runningCount stays 0 and the previous
deployment stays ACTIVE with its tasks. Tasks are stopped when DescribeServices or
UpdateService reads the service (a caller lists a deployment's tasks after reading it). With the service tag
`capstan.dev/moto-circuit-breaker: "true"` (moto keeps no deploymentConfiguration), the
circuit breaker above sets rolloutState FAILED and counts failedTasks.

Relied on by: the Pipeline deploy tests (crates/capstan/tests/pipeline_deploy.rs: a new
task definition makes a new PRIMARY deployment that completes or fails; failed tasks
are listed by deployment), the ServiceScaling integration tests (crates/capstan/tests/service_scaling*.rs:
running counts follow the desired count; utilization is averaged over running tasks)
and the SecretRotation ECS restart (a forced deployment completes).
"""

import json
import math
import time

from moto.ecr.models import ecr_backends
from moto.ecs import models
from moto.moto_api._internal import mock_random

START_TAG = "capstan.dev/moto-task-start-seconds"
FAIL_TAG = "capstan.dev/moto-task-fail-seconds"
BREAKER_TAG = "capstan.dev/moto-circuit-breaker"
BEHAVIOUR_ANNOTATION = "capstan.dev/moto-behaviour"


def _tag(service, name):
    for tag in service.tags or []:
        key = tag.get("key", tag.get("Key"))
        if key == name:
            return tag.get("value", tag.get("Value"))
    return None


def _seconds(service, name, default: float) -> float:
    value = _tag(service, name)
    if value is None:
        return default
    try:
        return max(float(value), 0.0)
    except (TypeError, ValueError):
        return default


def _start_seconds(service) -> float:
    return _seconds(service, START_TAG, 0.0)


def _ecr_behaviour(image: str):
    """The failure marker of an image of the emulator's ECR, by digest or tag."""
    if ".dkr.ecr." not in image or "/" not in image:
        return None
    host, _, path = image.partition("/")
    account = host.split(".")[0]
    region = host.split(".")[3] if len(host.split(".")) > 3 else None
    if "@" in path:
        repo, _, ref = path.partition("@")
        match = lambda i: i.image_digest == ref  # noqa: E731
    else:
        repo, _, ref = path.rpartition(":") if ":" in path else (path, "", "latest")
        match = lambda i: ref in i.image_tags  # noqa: E731
    try:
        backend = ecr_backends[account][region]
    except (KeyError, TypeError):
        return None
    repository = backend.repositories.get(repo)
    if repository is None:
        return None
    for img in repository.images:
        if match(img):
            try:
                manifest = json.loads(img.image_manifest)
            except ValueError:
                return None
            return (manifest.get("annotations") or {}).get(BEHAVIOUR_ANNOTATION)
    return None


def _behaviour(service):
    """`exit-1`, `unhealthy` or None for the service's current task definition."""
    if not service.task_definition:
        return None
    try:
        td = service._backend.describe_task_definition(service.task_definition)
    except Exception:  # noqa: BLE001 - a missing task definition has no marker
        return None
    for c in td.container_definitions:
        image = str(c.get("image", ""))
        if "moto-exit-1" in image:
            return "exit-1"
        if "moto-unhealthy" in image:
            return "unhealthy"
        marker = _ecr_behaviour(image)
        if marker in ("exit-1", "unhealthy"):
            return marker
    return None


def _fail_tasks(service, primary, behaviour: str, started_at: float) -> int:
    """Stops the tasks the failing deployment has started by now; returns how many."""
    backend = service._backend
    interval = _seconds(service, FAIL_TAG, 1.0) or 1.0
    due = int((time.time() - started_at) / interval)
    if not hasattr(service, "_capstan_failed"):
        service._capstan_failed = {}
    stopped = service._capstan_failed.setdefault(primary["id"], [])
    cluster = backend.clusters.get(service.cluster_name)
    if cluster is None:
        return len(stopped)
    td = backend.describe_task_definition(service.task_definition)
    while len(stopped) < due:
        task = models.Task(
            cluster,
            td,
            None,
            None,
            backend,
            group=f"service:{service.name}",
            launch_type=service.launch_type or "",
            started_by=primary["id"],
        )
        task.desired_status = "STOPPED"
        task.last_status = "STOPPED"
        for c in task.containers:
            if behaviour == "unhealthy":
                c.exitCode = 137
                c.health_status = "UNHEALTHY"
            else:
                c.exitCode = 1
                c.health_status = "UNKNOWN"
            c.last_status = "STOPPED"
        if behaviour == "unhealthy":
            task.stopped_reason = "Task failed container health checks"
            task.stop_code = "ServiceSchedulerInitiated"
        else:
            task.stopped_reason = "Essential container in task exited"
            task.stop_code = "EssentialContainerExited"
        backend.tasks.setdefault(cluster.name, {})[task.task_arn] = task
        stopped.append(task.task_arn)
    return len(stopped)


def _primary(service):
    for d in service.deployments:
        if d.get("status") == "PRIMARY":
            return d
    return None


def _changed(service, running_before: int, new_deployment: bool) -> None:
    """Records a change: tasks start from now on."""
    service._capstan_changed_at = time.time()
    service._capstan_running_before = running_before
    if not service.deployments:
        return
    primary = _primary(service)
    if new_deployment and primary is not None:
        primary["status"] = "ACTIVE"
        new = dict(primary)
        new["id"] = f"ecs-svc/{mock_random.randint(0, 32**12)}"
        new["status"] = "PRIMARY"
        new["rolloutState"] = "IN_PROGRESS"
        new["failedTasks"] = 0
        new["createdAt"] = models.utcnow()
        service.deployments = [new] + [d for d in service.deployments if d is not new]


def _advance(service) -> None:
    """Brings the service's counts and deployments to what the model says now."""
    changed_at = getattr(service, "_capstan_changed_at", None)
    if changed_at is None:
        _changed(service, 0, False)
        changed_at = service._capstan_changed_at
    done = time.time() - changed_at >= _start_seconds(service)
    desired = int(service.desired_count or 0)
    primary = _primary(service)
    behaviour = _behaviour(service) if primary is not None else None
    if behaviour is not None:
        done = False
    running = desired if done else min(service._capstan_running_before, desired)
    service.running_count = running
    service.pending_count = max(desired - running, 0)
    if primary is None:
        return
    primary["desiredCount"] = desired
    primary["runningCount"] = 0 if behaviour else running
    primary["pendingCount"] = service.pending_count
    primary["taskDefinition"] = service.task_definition
    primary["updatedAt"] = models.utcnow()
    if behaviour is not None:
        failed = _fail_tasks(service, primary, behaviour, changed_at)
        if primary.get("rolloutState") == "FAILED":
            return
        counted = failed if behaviour == "unhealthy" else 0
        primary["failedTasks"] = counted
        threshold = max(3, min(200, math.ceil(desired / 2)))
        if _tag(service, BREAKER_TAG) == "true" and counted >= threshold:
            primary["rolloutState"] = "FAILED"
            primary["rolloutStateReason"] = (
                "ECS deployment circuit breaker: tasks failed to start."
            )
        else:
            primary["rolloutState"] = "IN_PROGRESS"
            primary["rolloutStateReason"] = f"ECS deployment {primary['id']} in progress."
        return
    if done:
        primary["rolloutState"] = "COMPLETED"
        primary["rolloutStateReason"] = f"ECS deployment {primary['id']} completed."
        service.deployments = [primary]
    else:
        primary["rolloutState"] = "IN_PROGRESS"
        primary["rolloutStateReason"] = f"ECS deployment {primary['id']} in progress."


_create_service = models.EC2ContainerServiceBackend.create_service
_describe_services = models.EC2ContainerServiceBackend.describe_services
_update_service = models.EC2ContainerServiceBackend.update_service


def create_service(self, *args, **kwargs):
    service = _create_service(self, *args, **kwargs)
    _changed(service, 0, False)
    _advance(service)
    return service


def describe_services(self, *args, **kwargs):
    services, failures = _describe_services(self, *args, **kwargs)
    for service in services:
        _advance(service)
    return services, failures


def update_service(self, service_properties):
    cluster = service_properties.get("cluster", "default")
    name = str(service_properties.get("service", "")).split("/")[-1]
    before = self._get_service(cluster, name)
    _advance(before)
    running_before = before.running_count
    desired_before = before.desired_count
    task_definition_before = before.task_definition
    force = bool(service_properties.get("force_new_deployment", False))
    service = _update_service(self, service_properties)
    new_deployment = force or service.task_definition != task_definition_before
    if new_deployment or service.desired_count != desired_before:
        _changed(service, running_before, new_deployment)
    _advance(service)
    return service


models.EC2ContainerServiceBackend.create_service = create_service
models.EC2ContainerServiceBackend.describe_services = describe_services
models.EC2ContainerServiceBackend.update_service = update_service
