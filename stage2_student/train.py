"""train(cfg): the whole DDK stage-2 run, top to bottom, in one readable function.

open store -> checks -> student -> optimizer/schedule/sampler -> restore or evaluate r_0 -> loop:
sample -> forward -> loss -> backward -> clip -> step -> log -> (every K steps) evaluate -> reweight -> checkpoint
-> final evaluation and save_pretrained. Only tested pieces live elsewhere: the reweighting math, the sampler, the
loss, the schedule, evaluation and checkpoints.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from ddk_store import open_store, settings
from ddk_store.paths import share_permissions
from ddk_store.encodings import encoding_for
from ddk_store.errors import (ConfigError, Interrupted, PeerFailed, StoreIOError, StudentError, TrainingDiverged,
                              describe)

from . import parallel, rundir, runtime
from . import reweighting as rw
from .checkpoint import TRAINING_FIELDS, CheckpointWriter, finish_writes, latest_checkpoint, load_checkpoint
from .config import Stage2Config, write_config
from .data import Prefetcher
from .evaluate import evaluate, teacher_heldout_ppl
from .loss_step import student_loss
from .readpool import default_read_workers
from .repeats import find_repeats
from .resume import check_same_store, continue_advice, prepare_out_dir, replace_run, run_finished
from .rundir import CONFIG_FILE, interval_record, step_record
from .sampler import DomainSampler
from .schedule import lr_at
from .sinks import open_sink
from .store_checks import check_store_rows
from .student import load_student


# ----------------------------------------------------------------------------------------------- small helpers
def _diverged(cfg: Stage2Config, what: str) -> str:
    """The one-line report of a run whose loss or held-out perplexity stopped being finite."""
    return (f"{what}: training diverged. Start it again with a lower --lr (this run: {cfg.lr:g}) and --overwrite "
            f"(a resume keeps the learning rate); if a lower rate diverges too, check the store with "
            f"`ddk-store verify {cfg.store}`")


def _run_guard(fn):
    """Around a run: rank 0 holds the run directory's lock (:func:`rundir.claim_run_dir`) while it trains; a store
    that stays unreachable or refuses access, Ctrl-C or SIGTERM, or a peer rank that dies ends the run with how to
    continue it (checkpoints make that exact) under the launch the run needs."""
    @functools.wraps(fn)
    def wrapper(cfg: Stage2Config) -> Path:
        env = parallel.dist_env()
        lock = rundir.claim_run_dir(cfg.out) if env.rank == 0 else None
        try:
            return fn(cfg)
        except StoreIOError as e:
            raise e.with_hint("once it is fixed, rerun the same command with --resume to continue from the last "
                              "checkpoint") from None
        except KeyboardInterrupt:
            finish_writes()  # the advice names the last checkpoint: the one being written, once committed
            if not (Path(cfg.out) / CONFIG_FILE).is_file():
                raise  # before the run was written: the generic advice (rerun the same command) holds
            raise Interrupted(f"interrupted; {continue_advice(cfg, env.world, env.local_world)}") from None
        except RuntimeError as e:
            if env.world == 1 or not _peer_failure(e):
                raise
            finish_writes()
            raise PeerFailed(f"another process of this {env.world}-process run stopped ({describe(e, 160)}); "
                             f"{continue_advice(cfg, env.world, env.local_world)}") from None
        finally:
            finish_writes()  # (no-op when the run waited already) the lock outlives the last write
            rundir.release_run_dir(lock)

    return wrapper


def _peer_failure(e: RuntimeError) -> bool:
    """A collective failed because another rank is gone (gloo: "Connection closed by peer"; NCCL: DistError)."""
    return isinstance(e, getattr(dist, "DistError", ())) or "gloo" in str(e) or "by peer" in str(e)


# ----------------------------------------------------------------------------------------------------- train
@_run_guard
def train(cfg: Stage2Config) -> Path:
    """Run stage 2 as configured; return the output directory. Raises DdkError for any bad input, before training."""
    env = parallel.dist_env()
    rank, world = env.rank, env.world
    out = Path(cfg.out)
    K, B, A = cfg.interval_steps, cfg.batch_size, cfg.grad_accum

    # -- 1. every check that needs no model, cheapest first
    # more ranks on a host than GPUs, or --device cuda without CUDA: refused before --out is touched
    device = parallel.pick_device(cfg.device, env)
    sink = open_sink(cfg.report_to, out)  # --report-to: a missing package is refused here too; None for none
    # before the batch check: a resume by another number of processes is refused there, naming the launch it needs
    resuming = prepare_out_dir(cfg, rank=rank, world=world)
    if B % (world * A):
        raise ConfigError(f"--batch-size {B} must be divisible by world_size x --grad-accum = {world} x {A}")
    if resuming and run_finished(out, cfg.steps):
        return out  # (prepare_out_dir said so) nothing to train, evaluate or save again
    # refuses incomplete stores, unknown versions and encodings
    reader = open_store(cfg.store, storage_options=cfg.storage_options, cache_dir=cfg.cache_dir,
                        cache_max_bytes=cfg.cache_max_bytes)
    reader.check_structure()  # every array exists with the shape the metadata gives (metadata reads only)
    if encoding_for(reader.meta).sampled and cfg.temperature != 1.0:
        raise ConfigError(f"--temperature {cfg.temperature}: store {cfg.store} is {reader.meta.encoding!r}, whose draw "
                          "frequencies estimate the teacher at temperature 1 only (a power of an estimate is biased); "
                          "train with --temperature 1, or from a store dumped with another --encoding")
    domains = reader.domains
    D = len(domains)
    static = rw.static_weights_vector(cfg.static_weight_map(), domains) if cfg.mixing == "static" else None
    num_rows = [reader.num_rows(d, "train") for d in domains]
    check_store_rows(cfg, reader, num_rows, static, B)  # training and held-out rows, the epoch cap
    # Reads every held-out target log-prob and checks the recorded teacher statistics against them (seconds): a
    # damaged or edited store stops here, before the student is even loaded. Chunks read later are checked as read.
    ppl_teacher = teacher_heldout_ppl(reader, domains, cfg.heldout_rows)
    if resuming:  # the same store as the checkpoint's (one dumped again at its path is refused here)
        check_same_store(out, latest_checkpoint(out), cfg.store, domains=domains, num_rows=num_rows,
                         ppl_teacher=ppl_teacher)

    # -- 2. distributed setup, student
    parallel.init_distributed(device, world)
    torch.manual_seed(cfg.seed)
    model, tokenizer = load_student(cfg.student, reader.meta, store=cfg.store,
                                    trust_remote_code=cfg.trust_remote_code, device=device)
    model.train()
    if cfg.activation_checkpointing:
        runtime.enable_activation_checkpointing(model)
    fsdp = cfg.fsdp and world > 1  # one process has nothing to shard over
    if fsdp:
        parallel.shard_fsdp(model, device)  # before the optimizer: it holds the sharded parameters
    V = reader.vocab_size
    # bf16 autocast on CUDA (fp32 master weights and optimizer); plain fp32 on CPU, where bf16 matmuls are slow.
    amp_dtype = torch.bfloat16 if device.type == "cuda" else None
    autocast = (lambda: torch.autocast("cuda", dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext
    optimizer = runtime.make_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay, device=device)
    writer = CheckpointWriter(out, rank=rank, world_size=world, keep=cfg.keep_checkpoints, sharded=fsdp)
    sampler = DomainSampler(num_rows, rows_per_interval=K * B, seed=cfg.seed)

    # Every evaluation so far (step, ratios, the weights sampled from it on), kept in the checkpoint: what the
    # repeats rule (repeats.py) reads; rank 0 warns once for each domain it flags.
    history: list[dict[str, Any]] = []
    warned: set[str] = set()

    def log(record: dict[str, Any]) -> None:
        if rank == 0:
            rundir.append_record(out, record, sink)

    def note_eval(step: int, ratio: np.ndarray) -> None:
        """Add an evaluation to ``history``; warn of the domains whose repeated rows stopped paying."""
        trained = sampler.rows_trained(step - max(sampler.interval, 0) * K, B)  # up to this step: what the rule counts
        history.append({"domains": domains, "step": step, "ratio": [float(x) for x in ratio], "weights": None,
                        "rows_trained": trained})
        for found in find_repeats(history, B, num_rows, steps=cfg.steps) if rank == 0 else ():
            if found.domain not in warned:
                warned.add(found.domain)
                tqdm.write(f"warning: {found.message()}", file=sys.stderr)

    def run_eval(untrained: bool = False) -> tuple[dict[str, list[float]], np.ndarray]:
        ev = evaluate(model, reader, domains, vocab_size=V, batch_size=cfg.eval_batch_size,
                      heldout_rows=cfg.heldout_rows, device=device, autocast_dtype=amp_dtype, rank=rank,
                      world_size=world)
        bad = [f"{d} {p:g}" for d, p in zip(domains, ev["ppl"]) if not math.isfinite(p)]
        if bad:  # before any step no learning rate made it: the student's weights did
            what = f"held-out perplexity {', '.join(bad)}"
            raise (StudentError(f"--student {cfg.student}: {what} before any training step: its predictions overflow "
                                "on these rows. Check its weights (damaged or rescaled?), or start from one made by "
                                "`ddk-student init`") if untrained else TrainingDiverged(_diverged(cfg, what)))
        return ev, rw.perplexity_ratio(ev["ppl"], ppl_teacher)

    def checkpoint(step: int) -> None:
        writer.save(step, model=model, optimizer=optimizer,  # written by a background thread
                    state={"factor": factor.tolist(), "weights": weights.tolist(), "sampler": sampler.state_dict(),
                           "ppl_teacher": ppl_teacher, "history": [dict(h) for h in history],
                           "config": settings.saved_dict(cfg)})

    def capped(w: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """--max-epochs-per-domain: (weights to sample from ``step`` on, cap, capped); ``w`` itself without a cap.
        The weights are also recorded on the evaluation just added to ``history``."""
        weights, cap, held = rw.apply_epoch_cap(w, cfg.max_epochs_per_domain, remaining_steps=cfg.steps - step,
                                                rows_per_step=B, num_rows=num_rows, consumed=sampler.consumed,
                                                spill=None if static is None else [x > 0 for x in static])
        history[-1]["weights"] = [float(x) for x in weights]
        return weights, cap, held

    def new_interval(step: int) -> None:
        """Interval boundary (Algorithm 1, lines 8-13): measure, reweight, draw the next K steps, checkpoint."""
        nonlocal factor, weights
        ev, ratio = run_eval()
        note_eval(step, ratio)
        factor = rw.next_weights(cfg.mixing, factor, ratio, cfg.alpha)
        weights, cap, held = capped(factor, step)  # after interval 0 the factor is the sampling distribution
        sampler.start_interval(step // K, weights)
        log(interval_record(step, step // K, domains, ev, ppl_teacher, ratio, weights, factor,
                            train_rows=num_rows, rows_trained=history[-1]["rows_trained"], cap=cap, capped=held))
        checkpoint(step)

    # -- 3. restore, or start: evaluate the initial student, r_0 by Eq. 1, interval-0 mixture
    if resuming:
        ckpt = latest_checkpoint(out)
        doc = load_checkpoint(ckpt, model=model, optimizer=optimizer, rank=rank, world_size=world, sharded=fsdp,
                              required=TRAINING_FIELDS)
        step = int(doc["step"])
        factor, weights = np.asarray(doc["factor"]), np.asarray(doc["weights"])
        sampler.load_state_dict(doc["sampler"])
        # (checkpoints of older versions have none: the rule starts afresh); a finished run's last entry is its
        # final evaluation, which nothing was sampled from: an extended run samples on from its interval
        saved = doc.get("history", [])
        history.extend(h for h in saved if h.get("weights") is not None)
        warned.update(f.domain for i in range(2, len(saved) + 1) if rank == 0  # warned before: not again
                      for f in find_repeats(saved[:i], B, num_rows, steps=cfg.steps))
        # a finished run extended by --steps: its end is a boundary again (a killed extension's record there goes)
        extend = step % K == 0 and step < cfg.steps and sampler.interval < step // K
        if rank == 0:
            rundir.truncate_metrics(out, step, redo_interval=extend)
            write_config(cfg, out / CONFIG_FILE)  # the settings it continues with (a larger --steps, say)
        if extend:
            new_interval(step)
    else:
        step = 0
        ev, ratio = run_eval(untrained=True)  # also fails fast (seconds) on a student that cannot run on these rows
        replace_run(cfg, rank=rank)  # --overwrite: only now that the store and the student have passed every check
        if world > 1:
            dist.barrier()  # rank 0 may have just deleted the old run
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            write_config(cfg, out / CONFIG_FILE)
            rundir.start_metrics(out)
        note_eval(0, ratio)
        factor, weights = rw.initial_weights(cfg.mixing, ratio=ratio, num_rows=num_rows, static=static,
                                             init_mixture=cfg.init_mixture)
        weights, cap, held = capped(weights, 0)
        sampler.start_interval(0, weights)
        log(interval_record(0, 0, domains, ev, ppl_teacher, ratio, weights, factor, train_rows=num_rows,
                            rows_trained=history[-1]["rows_trained"], cap=cap, capped=held))
        checkpoint(0)

    train_model = model if fsdp or world == 1 else parallel.wrap_ddp(model, device)
    train_model = runtime.compile_forward(train_model, cfg.compile, device)  # --compile; eager if it fails

    decode = cfg.topk_decode if cfg.topk_decode != "auto" else ("device" if device.type == "cuda" else "host")

    def interval_batches(step: int) -> Prefetcher:
        """This rank's micro-batches from ``step`` to the end of its interval (or of the run)."""
        first, last = step % K, min(K, step % K + (cfg.steps - step))
        plans = [sampler.rows_for(s, batch_size=B, chunk=rank * A + m, num_chunks=world * A)
                 for s in range(first, last) for m in range(A)]
        return Prefetcher(reader, domains, plans, depth=cfg.prefetch, pin=device.type == "cuda",
                          workers=cfg.read_workers or default_read_workers(env.local_world), decode=decode)

    # -- 4. the loop
    if rank == 0:
        tqdm.write(cfg.plan_line(seq_len=reader.seq_len, device=str(device), world=world), file=sys.stderr)
    tokens_per_step = B * reader.seq_len
    bar = tqdm(total=cfg.steps, initial=step, disable=rank != 0 or not cfg.progress, desc="ddk-student",
               dynamic_ncols=True)
    prefetch = interval_batches(step)
    batches = iter(prefetch)
    t_last, step_last = time.perf_counter(), step  # tokens/s: over the steps since the last step line
    try:
        while step < cfg.steps:
            lr = lr_at(step, peak_lr=cfg.lr, total_steps=cfg.steps, warmup_steps=cfg.warmup,
                       final_lr_ratio=cfg.final_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            sums = torch.zeros(3, dtype=torch.float64)  # total, ce, kl summed over micro-steps
            for micro in range(A):
                batch = next(batches).to(device)
                # Skip DDP's all-reduce on all but the last micro-step: gradients accumulate locally first.
                sync = contextlib.nullcontext() if (world == 1 or fsdp or micro == A - 1) else train_model.no_sync()
                with sync:
                    # forward + loss: fused from the last hidden state (no [b, T, V] logits) for Llama-shaped
                    # students, else the model's logits and the reference loss (loss_step.py decides, once).
                    parts = student_loss(train_model, model, batch.tokens, batch.topk_ids, batch.topk_logprobs,
                                         vocab_size=V, autocast=autocast, gamma=cfg.gamma,
                                         temperature=cfg.temperature, tail=cfg.kl_tail, t2_scale=cfg.kl_t2_scale,
                                         chunk_size=cfg.loss_chunk_size, topk_log_tail=batch.topk_log_tail)
                    (parts.total / A).backward()
                sums += torch.tensor([float(parts.total.detach()), float(parts.ce), float(parts.kl)], dtype=torch.float64) / A
                del parts
            # (--grad-clip 0: the norm is still measured and logged; an infinite bound scales by 1)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
            grad_norm = parallel.full_tensor(grad_norm)  # a DTensor under FSDP
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)

            if step % cfg.log_every == 0 or step == cfg.steps:
                if world > 1:
                    sums = parallel.all_reduce_sum(sums) / world  # on the GPU under nccl, which has no CPU path
                now = time.perf_counter()
                tok_s = tokens_per_step * (step - step_last) / max(now - t_last, 1e-9)
                t_last, step_last = now, step
                loss, ce, kl = sums.tolist()
                if not math.isfinite(loss):
                    raise TrainingDiverged(_diverged(cfg, f"step {step}: the loss is {loss} (ce {ce}, kl {kl})"))
                log(step_record(step, loss=loss, ce=ce, kl=kl, lr=lr, grad_norm=float(grad_norm),
                                tokens_per_s=tok_s))
                bar.set_postfix_str(f"loss={loss:.3f} tok/s={tok_s:,.0f} w=[" +
                                    " ".join(f"{d}:{w:.2f}" for d, w in zip(domains, weights)) + "]")

            if step % K == 0 and step < cfg.steps:
                prefetch.close()
                new_interval(step)
                prefetch = interval_batches(step)
                batches = iter(prefetch)
            elif cfg.save_every and step % cfg.save_every == 0 and step < cfg.steps:
                checkpoint(step)
    except BaseException:
        writer.wait(reraise=False)  # Ctrl-C in a checkpoint's write: the message names the step --resume starts at
        raise
    finally:
        prefetch.close()
        bar.close()

    # -- 5. final evaluation, export, last checkpoint
    ev, ratio = run_eval()
    note_eval(step, ratio)  # (a last warning; nothing is sampled after it)
    log(interval_record(step, step // K, domains, ev, ppl_teacher, ratio, weights, factor, event=rundir.FINAL,
                        train_rows=num_rows, rows_trained=history[-1]["rows_trained"]))
    full = parallel.full_state_dict(model) if fsdp else None  # gathered on rank 0 (a collective)
    if rank == 0:
        model.save_pretrained(out, state_dict=full)
        tokenizer.save_pretrained(out)
        for path in out.iterdir():  # safetensors files are created owner-only; the team shares the student
            if path.is_file() and path.stat().st_uid == os.getuid():  # (a teammate's files are theirs to change)
                share_permissions(path)
    checkpoint(step)
    writer.wait()  # committed before train() returns (a Ctrl-C meanwhile: _run_guard waits, then says it finished)
    if rank == 0 and resuming and (out / rundir.REPORT_FILE).is_file():
        tqdm.write(f"note: {out / rundir.REPORT_FILE} and its plots show the run before this resume; "
                   f"`ddk-student report {out}` draws them anew", file=sys.stderr)
    if world > 1:
        dist.barrier()
    return out
