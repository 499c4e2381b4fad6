"""`redrive`: the bulk-redrive runbook as one call.

    plan (sources checked to exist) → guard → [delete first] → send → [follow → finish]

A new run writes its plan to its files and its manifest last; `resume` reads them back and
carries on where the run stopped: deletions and sends already recorded are not repeated.
"""

from __future__ import annotations

from typing import Any

from sluice.env import Env
from sluice.layout import parse_uri
from sluice.ops.guard import confirm_destructive
from sluice.ops.redrive.follow import Tracker, finish, follow
from sluice.ops.redrive.model import (
    SAMPLES,
    KeptFile,
    Mode,
    OnEvent,
    Orphan,
    RedriveEvent,
    RedriveInterrupted,
    RedriveRequest,
    RedriveResult,
    SourcesPending,
    Target,
)
from sluice.ops.redrive.plan import Planner, describe_plan
from sluice.ops.redrive.runfiles import RunFiles, new_run_id, open_run
from sluice.ops.redrive.send import Sender


def redrive(env: Env, request: RedriveRequest, on_event: OnEvent | None = None) -> RedriveResult:
    """Plan, check and send a redrive run; with `wait`, follow it to its end and finish it.

    Raises:
        ConfigError: bad targets or flags (no mode, several, bad URIs, unknown type, …).
        ObjectNotFound: the verified file of `--parquet-uri` does not exist.
        MissingSources: some sources' raw objects are gone (nothing deleted or sent).
        ProtectedEnvironment: a protected environment without `yes` (nothing changed).
        UnknownRun: `resume` names no run.
        RedriveInterrupted: a delete or send failed part-way (resume the run).
        SourcesPending: `finish` while sources are still being reprocessed.
    """
    if request.resume is not None:
        return _resume(env, request, request.resume, on_event)
    assert request.target is not None
    if request.dry_run or (env.config.protected and not request.yes):
        # Planned without writing anything: shown (dry run), or shown by the guard's refusal.
        result = RedriveResult(None, request.target, None, dry_run=request.dry_run)
        result.delete_parquet = request.delete_parquet
        _plan(env, request, None, result, on_event)
        # A dry run returns here; a protected environment without --yes raises, plan in hand.
        confirm_destructive(
            env,
            describe_plan(result),
            yes=request.yes,
            dry_run=request.dry_run,
            command=request.command,
        )
        return result
    files = RunFiles(env, new_run_id())
    result = RedriveResult(files.run_id, request.target, files.location)
    result.delete_parquet = request.delete_parquet
    manifest = _plan(env, request, files, result, on_event)
    # Not protected, or --yes: the guard lets it through; asked anyway, so that every
    # destructive command makes the same decision in the same place.
    confirm_destructive(env, describe_plan(result), yes=request.yes, dry_run=False)
    files.put("manifest.json", manifest)
    return _execute(env, request, files, manifest, result, on_event)


def _plan(
    env: Env,
    request: RedriveRequest,
    files: RunFiles | None,
    result: RedriveResult,
    on_event: OnEvent | None,
) -> dict[str, Any]:
    if on_event is not None:
        on_event(RedriveEvent("planning", detail=result.target.describe()))
    planner = Planner(env, request, files, result)
    try:
        planner.plan()
    except BaseException:
        # A plan that fails leaves no files: a run exists only once its manifest is written.
        if files is not None:
            files.discard()
        raise
    manifest = planner.manifest()
    if on_event is not None:
        on_event(RedriveEvent("planned", 0, result.sources, detail=describe_plan(result)))
    return manifest


def _execute(
    env: Env,
    request: RedriveRequest,
    files: RunFiles,
    manifest: dict[str, Any],
    result: RedriveResult,
    on_event: OnEvent | None,
) -> RedriveResult:
    result.deleted = _delete_targets(env, files, manifest, on_event)
    sender = Sender(env.processing_queue, files, request.pacing, result.sending, on_event)
    sender.total = int(manifest["sources"])
    sender.send_run(int(manifest["chunks"]))
    if not (request.wait or request.finish):
        return result
    tracker = Tracker(env, files, manifest, on_event)
    if request.wait:
        result.follow = follow(tracker, env, request.follow)
    else:
        tracker.sweep()
        tracker.result.touched = tracker.touched_days()
        result.follow = tracker.result
        if tracker.result.pending:
            raise SourcesPending(
                f"{tracker.result.pending} of the {tracker.result.total} sources of run"
                f" {files.run_id} are not reprocessed yet; the orphans stay until they are",
                hint=f"sluice redrive --resume {files.run_id} --wait",
                run_id=files.run_id,
                pending=tracker.result.pending_samples,
            )
    if result.follow.pending == 0:
        # Failed sources keep their orphans (see `finish`); the rest of the runbook still runs,
        # so the catalog and the report are right about everything that did go through.
        result.finish = finish(
            env, files, manifest, result.follow.touched, yes=request.yes, on_event=on_event
        )
    return result


def _delete_targets(
    env: Env, files: RunFiles, manifest: dict[str, Any], on_event: OnEvent | None
) -> int:
    """`--delete-parquet`: delete the targeted files, a chunk (one request) at a time."""
    deleted = 0
    for number in range(int(manifest.get("target_chunks", 0))):
        done = files.get_chunk("deleted", number)
        if done is not None:
            deleted += int(done["deleted"])
            continue
        chunk = files.get_chunk("targets", number)
        assert chunk is not None, f"target chunk {number} of run {files.run_id} is missing"
        by_bucket: dict[str, list[str]] = {}
        for uri in chunk["items"]:
            ref = parse_uri(uri)
            by_bucket.setdefault(ref.bucket, []).append(ref.key)
        for bucket, keys in by_bucket.items():
            outcome = env.store.delete_batch(bucket, keys)
            if outcome.errors:
                failed = sorted(outcome.errors.items())
                raise RedriveInterrupted(
                    f"{len(failed)} file(s) of run {files.run_id} could not be deleted, e.g."
                    f" {failed[:3]}; nothing was sent yet",
                    hint=f"sluice redrive --resume {files.run_id}",
                    run_id=files.run_id,
                    errors=dict(failed[:SAMPLES]),
                )
            deleted += len(keys)
        files.put_chunk("deleted", number, {"deleted": len(chunk["items"])})
        if on_event is not None:
            on_event(RedriveEvent("deleted", deleted, int(manifest["targets"])))
    return deleted


def _resume(
    env: Env, request: RedriveRequest, run_id: str, on_event: OnEvent | None
) -> RedriveResult:
    files, manifest = open_run(env, run_id)
    result = _result_of(files, manifest)
    result.resumed = True
    result.dry_run = request.dry_run
    go = confirm_destructive(
        env,
        describe_plan(result) + f"\n  (resuming run {run_id})",
        yes=request.yes,
        dry_run=request.dry_run,
        command=request.command,
    )
    if not go:
        for number in range(int(manifest["chunks"])):
            done = files.get_chunk("results", number) or {"sent": 0}
            result.sending.already_sent += int(done["sent"])
        return result
    return _execute(env, request, files, manifest, result, on_event)


def _result_of(files: RunFiles, manifest: dict[str, Any]) -> RedriveResult:
    target = manifest["target"]
    result = RedriveResult(
        files.run_id,
        Target(Mode(target["mode"]), target.get("uri"), target.get("day"), target.get("type")),
        files.location,
    )
    result.delete_parquet = bool(manifest["delete_parquet"])
    result.sources = int(manifest["sources"])
    result.missing = list(manifest["missing"])
    result.missing_count = int(manifest["missing_count"])
    result.excluded_by_limit = int(manifest["excluded_by_limit"])
    result.to_delete = int(manifest["targets"])
    result.orphans = int(manifest["orphans"])
    result.replaced_in_place = int(manifest["replaced_in_place"])
    result.kept = [KeptFile(**k) for k in manifest["kept"]]
    result.kept_count = int(manifest["kept_count"])
    result.stray_keys = int(manifest["stray_keys"])
    first = files.get_chunk("chunks", 0) if manifest["chunks"] else None
    result.send = [item[0] for item in (first or {"items": []})["items"][:SAMPLES]]
    orphans = files.get_chunk("orphans", 0) if manifest["orphan_chunks"] else None
    result.orphan_list = [
        Orphan(o["uri"], tuple(o["sources"])) for o in (orphans or {"items": []})["items"][:SAMPLES]
    ]
    return result
