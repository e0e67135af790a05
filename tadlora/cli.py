"""Command line: argument parsing and printing only; the work is in the library."""

from __future__ import annotations

import argparse
import signal
import sys
import warnings
from dataclasses import fields
from pathlib import Path

from . import __version__
from .runs import health, loop
from .runs.checkpoint import CheckpointError
from .runs.config import Config, ConfigError, load
from .runs.rundir import SUMMARY, RunDir, resumable_config
from .study import records, report, sweep


def _split(args: list[str]) -> tuple[str | None, list[str]]:
    """[CONFIG] [section.key=value ...] -> (config path or None, overrides)."""
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, args


def _config(args: list[str]) -> Config:
    path, overrides = _split(args)
    sections = {f.name for f in fields(Config)}
    if path and not Path(path).exists() and path.split(".")[0] in sections and "." in path:
        raise ConfigError(f"{path!r} is not a config file, and an override needs a value: "
                          f"{path}=VALUE")
    return load(path, overrides)


def results_table(summary: dict) -> str:
    """Per-client validation accuracy with the client's label counts, then the aggregates."""
    names, gone = summary["label_names"], set(summary.get("departed", ()))
    lines = [f"{'client':>6}  {'labels (' + '/'.join(names) + ')':<28} {'accuracy':>8}"]
    for i, (acc, counts) in enumerate(zip(summary["client_acc"], summary["label_counts"],
                                          strict=True)):
        lines.append(f"{i:>6}  {'/'.join(map(str, counts)):<28} {acc:>8.4f}"
                     + ("  departed (not in the aggregates)" if i in gone else ""))
    lines.append(f"{'mean':>6}  {'':<28} {summary['mean']:>8.4f}")
    lines.append(f"{'std':>6}  {'':<28} {summary['std']:>8.4f}")
    lines.append(f"min {summary['min']:.4f}  max {summary['max']:.4f}  averaged adapter "
                 f"{summary['averaged_adapter_acc']:.4f}")
    return "\n".join(lines)


def _resume_overrides(args: list[str]) -> list[str]:
    if args and "=" not in args[0]:
        raise ConfigError("with --resume the config comes from the run directory; "
                          "pass only run.* overrides")
    return args


def cmd_run(ns: argparse.Namespace) -> None:
    if ns.resume:
        directory, summary = loop.resume(ns.resume, _resume_overrides(ns.args))
    else:
        directory, summary = loop.run(_config(ns.args))
    print(results_table(summary))
    print(f"run directory: {directory}")


def _peer_config(ns: argparse.Namespace) -> Config:
    if not ns.resume:
        return _config(ns.args)
    return resumable_config(Path(ns.resume), _resume_overrides(ns.args))


def _change(ns: argparse.Namespace):
    from .core.membership import Change

    if (ns.rejoin or ns.depart) and not ns.resume:
        raise ConfigError("--rejoin and --depart change a resumed run: add --resume RUN_DIR")
    try:
        depart = tuple(int(c) for c in ns.depart.split(",")) if ns.depart else ()
    except ValueError:
        raise ConfigError(f"--depart {ns.depart!r}: give client ids, e.g. --depart 2,3") from None
    return Change(depart, ns.rejoin)


def cmd_launch(ns: argparse.Namespace) -> int:
    from .engines.exchange import client_slices
    from .engines.launch import launch

    cfg = _peer_config(ns)
    _change(ns)
    client_slices(cfg.clients.n, ns.peers)  # fails early when there are too few clients
    health.check_device(cfg)
    d = cfg.distributed
    out = launch(ns.peers, ["--rejoin", *ns.args] if ns.rejoin else ns.args, d.timeout_s,
                 cfg.run.out_dir, Path(ns.resume) if ns.resume else None, d.on_peer_loss,
                 cfg.clients.n)
    for problem in out.problems:
        print(f"tadlora launch: {problem}", file=sys.stderr)
    if out.code == 3:
        where = out.directory or "RUN_DIR"
        print(f"tadlora launch: the peers stopped; every finished round is in the checkpoint: "
              f"continue with `tadlora launch --peers {out.peers} --resume {where}`",
              file=sys.stderr)
    if out.code:
        return out.code
    summary = RunDir(out.directory).read_json(SUMMARY)
    print(results_table(summary))
    print(f"run directory: {out.directory}")
    return 0


def cmd_peer(ns: argparse.Namespace) -> int:
    from .runs import peer

    change = _change(ns)
    if not ns.resume:
        cfg = _config(ns.args)
        restarted = peer.restarted_run(cfg)
        if restarted is None:
            return peer.main(cfg, None, change)
        ns.resume, ns.args = restarted, []
    return peer.main(_peer_config(ns), Path(ns.resume), change)


def cmd_topology(ns: argparse.Namespace) -> None:
    from .core import methods, topology
    from .runs import build

    cfg = _config(ns.args)
    t = cfg.topology
    s = topology.topology_stats(t.kind, cfg.clients.n, t.p, t.path or None, t.rho_samples)
    print(f"topology {t.kind} (p={t.p}) with {cfg.clients.n} clients, "
          f"{t.rho_samples} Monte Carlo samples")
    print(f"rho            {s.rho:.4f}")
    print(f"spectral gap   {s.spectral_gap:.4f}")
    print(f"mean degree    {s.mean_degree:.3f}")
    auto = (methods.switch_interval(s.rho, cfg.method.c) if s.rho < 1.0
            else "none (the graph never mixes)")
    print(f"auto T (c={cfg.method.c:g})  {auto}")
    if t.schedule:  # the stats above are topology.p's; auto follows each piece's rho
        for start, rho in build.segment_rhos(cfg):
            print(f"from round {start}: rho {rho:.4f}, auto T "
                  f"{methods.switch_interval(rho, cfg.method.c) if rho < 1 else 'none'}")


def cmd_export(ns: argparse.Namespace) -> None:
    from .runs.export import export

    out, rounds = export(ns.run_dir, ns.client, ns.out)
    print(f"client {ns.client} after {rounds} rounds -> {out} (load with "
          "peft.PeftModel.from_pretrained)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tadlora", description=__doc__)
    p.add_argument("--version", action="version", version=f"tadlora {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    over = "[CONFIG.toml] [section.key=value ...]"
    r = sub.add_parser("run", help="train a federation in one process", usage=f"tadlora run {over}")
    r.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    r.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    r.set_defaults(func=cmd_run)
    t = sub.add_parser("topology", help="rho, spectral gap, mean degree and auto T of a graph",
                       usage=f"tadlora topology {over}")
    t.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    t.set_defaults(func=cmd_topology)
    la = sub.add_parser("launch", help="train with N local peer processes (torch.distributed)",
                        usage=f"tadlora launch --peers N {over} | --peers N --resume RUN_DIR")
    la.add_argument("--peers", type=int, required=True, help="number of peer processes")
    la.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped distributed run")
    la.add_argument("--rejoin", action="store_true",
                    help="with --resume: clients that departed with a lost peer take part again")
    la.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    la.set_defaults(depart="")
    la.set_defaults(func=cmd_launch)
    pe = sub.add_parser("peer", help="one peer process (under torchrun or tadlora launch)",
                        usage=f"torchrun ... -m tadlora.cli peer {over}")
    pe.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped distributed run")
    pe.add_argument("--rejoin", action="store_true",
                    help="with --resume: clients that departed with a lost peer take part again")
    pe.add_argument("--depart", default="", metavar="CLIENTS",
                    help="with --resume: clients (e.g. 3,4,5) that take no part from the "
                         "resume's first round on (the launcher passes a lost peer's)")
    pe.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    pe.set_defaults(func=cmd_peer)
    e = sub.add_parser("export", help="write one client's adapter in peft's format")
    e.add_argument("run_dir")
    e.add_argument("--client", type=int, required=True)
    e.add_argument("--out", required=True)
    e.set_defaults(func=cmd_export)
    sweep.add_parser(sub)
    report.add_parser(sub)
    records.add_parser(sub)
    return p


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one line, without the code location (it is meant for the user)."""
    print(f"tadlora: warning: {message}", file=file or sys.stderr)


AFTER_INTERRUPT = {  # what continues the work of a command stopped by Ctrl-C or SIGTERM
    "sweep": "run the same sweep command again: finished runs are skipped, the interrupted "
             "one resumes from its last checkpoint",
    "launch": "continue with `tadlora launch --peers N --resume RUN_DIR`",
}


def _interrupted(command: str, e: KeyboardInterrupt) -> str:
    if isinstance(e, loop.Interrupted) and command == "run":
        return (f"its finished rounds are kept: continue with `tadlora run --resume {e.args[0]}` "
                "(with run.rounds=N to change the length)")
    return AFTER_INTERRUPT.get(command, "")


def main(argv: list[str] | None = None) -> int:
    ns = parser().parse_args(argv)
    warnings.showwarning = _show_warning
    # SIGTERM (kill, timeout, batch schedulers) stops a command as Ctrl-C does: cleanly
    term = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        code = ns.func(ns)
    except (ConfigError, CheckpointError, OSError, ValueError) as e:
        print(f"tadlora: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print("; ".join(filter(None, ("tadlora: interrupted", _interrupted(ns.command, e)))),
              file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, term)
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
