"""Pure functions that render the idempotent bash scripts run on GPU hosts.

pyinfra-style: each host step is a small function from a frozen dataclass (or plain
arguments) to a script string; nothing here opens a connection. The components run the
scripts through ``pulumi_command.remote.Command`` (``create=remote_command(script)``; secrets
go through ``stdin``). Every script starts with ``set -euo pipefail``, prints progress lines
``[host] step: ...`` on stderr and, where there is something to report, one JSON line on
stdout.
"""

from ._common import remote_command
from .docker_install import (
    DEB_PARENT,
    DebFile,
    DebsSpec,
    DockerSpec,
    docker_debs_install,
    docker_install,
)
from .fanout import (
    FanoutSpec,
    fanout_cleanup,
    fanout_driver,
    fanout_grant,
    fanout_keygen,
    fanout_pull,
    fanout_revoke,
)
from .image import (
    ImageLoadSpec,
    image_check,
    image_delete,
    image_has_ray,
    image_load,
    image_present,
    image_pull,
    tarball_image_id,
    tarball_repo_tags,
)
from .preflight import OWNER_LABEL, GpuExpectation, PreflightSpec, preflight
from .storage import FS_LABEL, StorageSpec, storage, storage_delete
from .weights import (
    DOWNLOAD_MARKER,
    MANIFEST,
    DownloadSpec,
    SshEndpoint,
    build_manifest,
    rsync_argv,
    ssh_options,
    verify_dir,
    weights_claim_end,
    weights_delete,
    weights_download,
    weights_ensure_dir,
    weights_keep,
    weights_verify,
    write_manifest,
)

__all__ = [
    "DEB_PARENT",
    "DOWNLOAD_MARKER",
    "FS_LABEL",
    "MANIFEST",
    "OWNER_LABEL",
    "DebFile",
    "DebsSpec",
    "DockerSpec",
    "DownloadSpec",
    "FanoutSpec",
    "GpuExpectation",
    "ImageLoadSpec",
    "PreflightSpec",
    "SshEndpoint",
    "StorageSpec",
    "build_manifest",
    "docker_debs_install",
    "docker_install",
    "fanout_cleanup",
    "fanout_driver",
    "fanout_grant",
    "fanout_keygen",
    "fanout_pull",
    "fanout_revoke",
    "image_check",
    "image_delete",
    "image_has_ray",
    "image_load",
    "image_present",
    "image_pull",
    "preflight",
    "remote_command",
    "rsync_argv",
    "ssh_options",
    "storage",
    "storage_delete",
    "tarball_image_id",
    "tarball_repo_tags",
    "verify_dir",
    "weights_claim_end",
    "weights_delete",
    "weights_download",
    "weights_ensure_dir",
    "weights_keep",
    "weights_verify",
    "write_manifest",
]
