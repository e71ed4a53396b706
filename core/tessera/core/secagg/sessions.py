"""A node's live secure-aggregation epochs: at most one per job, and epochs only move forward.

When a job starts a new epoch (fresh keys, after a coordinator restart or to let a restarted
node rejoin), the node destroys every secret of the job's older epoch *before* it takes part in
the new one, so nothing of an old epoch can ever be unmasked afterwards; an epoch number at or
below one already seen for the job is refused. Memory only: a node that restarts has forgotten
every epoch, which is safe (it can only join a new one).
"""

from __future__ import annotations

from tessera.core.errors import InvalidRequest
from tessera.core.secagg.client import SecAggClient


class StaleEpoch(InvalidRequest):
    """A message or set-up names an epoch of the job that is over or was never joined."""

    code = "secagg.stale_epoch"


class EpochSessions:
    def __init__(self) -> None:
        self._live: dict[str, SecAggClient] = {}
        self._newest: dict[str, int] = {}

    def start(self, client: SecAggClient) -> SecAggClient:
        """Register ``client`` as its job's live epoch, destroying the previous one first."""
        job, epoch = client.config.job_id, client.config.epoch
        newest = self._newest.get(job)
        if newest is not None and epoch <= newest:
            client.destroy()
            raise StaleEpoch(f"epoch {epoch} of this job is not newer than epoch {newest}, already joined")
        old = self._live.pop(job, None)
        if old is not None:
            old.destroy()
        self._live[job] = client
        self._newest[job] = epoch
        return client

    def get(self, job_id: str, epoch: int) -> SecAggClient:
        """The live client of ``job_id`` if ``epoch`` is its live epoch; :class:`StaleEpoch` else."""
        client = self._live.get(job_id)
        if client is None or client.config.epoch != epoch:
            raise StaleEpoch("this node holds no live secure-aggregation epoch with that number for the job")
        return client

    def end(self, job_id: str) -> None:
        """Destroy the job's live epoch (the job finished or failed); its number stays burnt."""
        old = self._live.pop(job_id, None)
        if old is not None:
            old.destroy()
