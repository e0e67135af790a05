"""The command line: printing, exit codes and clean errors (the work is tested with the
library modules it calls)."""

from tadlora import cli
from tests.conftest import tiny_run_args
from tests.core.test_graph_files import _write


def test_cli_run_prints_table_and_errors_cleanly(tiny_model_dir, tmp_path, capsys):
    assert cli.main(["run", *tiny_run_args(tiny_model_dir, tmp_path, "cli")]) == 0
    out = capsys.readouterr().out
    assert "mean" in out and "std" in out and "averaged adapter" in out
    assert cli.main(["run", "train.nope=1"]) == 2
    assert "unknown config key train.nope" in capsys.readouterr().err
    assert cli.main(["run", "--resume", str(tmp_path / "missing")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_cli_topology(capsys):
    assert cli.main(["topology", "topology.p=0.1", "topology.rho_samples=500"]) == 0
    out = capsys.readouterr().out
    assert "rho" in out and "spectral gap" in out and "mean degree" in out and "auto T" in out


def test_cli_topology_auto_interval(tmp_path, capsys):
    # MH ring of 10: rho = 0.7618, so T = round(2 / sqrt(1 - rho)) = 4 with c = 2
    assert cli.main(["topology", "topology.kind=ring", "method.c=2", "topology.rho_samples=5"]) == 0
    assert "auto T (c=2)  4\n" in capsys.readouterr().out
    path = _write(tmp_path, "two_parts.txt", "0 1\n2 3\n")
    assert cli.main(["topology", "topology.kind=file", f"topology.path={path}", "clients.n=4",
                     "topology.rho_samples=2"]) == 0
    out = capsys.readouterr().out
    assert "rho            1.0000" in out and "auto T (c=1)  none (the graph never mixes)" in out


def test_launch_refuses_more_peers_than_clients(tmp_path, capsys):
    assert cli.main(["launch", "--peers", "5", "clients.n=4", f"run.out_dir={tmp_path}"]) == 2
    assert "every peer needs at least one client" in capsys.readouterr().err
