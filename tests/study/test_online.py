"""The report's page on switch_interval=online (study/online.py)."""

from tadlora.runs import config, loop
from tadlora.study import report, results
from tests.runs.test_loop import ONLINE


def test_the_report_plots_the_estimate_against_the_monte_carlo_rho(tmp_path):
    runs = tmp_path / "runs"
    for seed in (0, 1):
        loop.run(config.load(None, [*ONLINE, f"run.out_dir={runs}", f"run.name=s{seed}",
                                    f"run.seed={seed}", "run.rounds=90"]))
    rows = results.collect(runs)
    assert {r["connectivity"] for r in rows} == {"er 0:0.5,20:0.02"}
    assert len(rows[0]["online"]) == 90 and rows[0]["online"][0][1] is None
    text = report.write_report(runs, tmp_path / "out").read_text()
    line = next(x for x in text.splitlines() if x.startswith("| synthetic | er 0:0.5,20:0.02"))
    error, same = line.split(" | ")[3:5]
    assert float(error.split()[0]) < 0.1 and same.rstrip(" |").endswith("%")
    assert (tmp_path / "out" / "rho_online__synthetic__er-0_0.5_20_0.02.png").stat().st_size
