"""Template extension: changes nothing.

It shows the shape of an extension and proves that the launcher loads this folder: the
moto log then lists `example_noop` among the loaded extensions. Copy it to add a model
of AWS behaviour moto lacks, e.g. by wrapping a backend method:

    from moto.ecs import models

    _original = models.EC2ContainerServiceBackend.update_service

    def update_service(self, *args, **kwargs):
        service = _original(self, *args, **kwargs)
        ...  # model what real ECS does here
        return service

    models.EC2ContainerServiceBackend.update_service = update_service
"""

LOADED = True
