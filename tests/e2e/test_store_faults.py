"""The tracking store as a sweep meets it when it starts: not there, refusing or taking credentials, new.

Real ``spark-submit`` jobs, a real ``mlflow server`` with MLflow's basic-auth app, a sqlite store two sweeps
create together; the exit codes, one-line errors and the runs are checked as in tests/e2e/test_faults.py, whose
helpers these tests use. None needs that module's reference sweep: a module of their own runs beside it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.e2e.harness import BackgroundJob, MlflowServer, free_port
from tests.e2e.test_faults import CHILDREN, job_log, results, sweep_runs, sweep_settings, tracebacks

PASSWORD = "e2e-admin-password-7f3c"  # basic-auth requires at least 12 characters


def test_unreachable_store_exits_4_quickly_before_the_table_is_read(tmp_path: Path) -> None:
    missing_table = tmp_path / "no-such-table"
    nobody = f"http://127.0.0.1:{free_port()}"
    settings = sweep_settings(str(missing_table), tmp_path, nobody, "unreachable")
    with BackgroundJob("train_sweep.py", settings, job_log(tmp_path, "unreachable")) as job:
        job.driver_pid()  # notes when the Python driver started
        code = job.wait(300)
    assert code == 4, job.tail()
    # connect() runs before Spark starts: ~5 s of retries (half of tracking.connect_timeout_seconds) after the
    # driver's imports, not MLflow's minutes of client retries (7 retries with exponential backoff: over 4 minutes);
    # the bounds are loose for a machine shared with the suite's other workers (a driver's imports took 29 s at a
    # load average of 20)
    assert job.driver_seconds_to_exit() < 60, f"{job.driver_seconds_to_exit():.1f} s after the driver started"
    assert job.seconds_to_exit() < 150, f"{job.seconds_to_exit():.1f} s after spark-submit started"
    [error] = [line for line in job.lines() if line.startswith("error:")]
    assert f"MLflow tracking store {nobody} is unavailable" in error and "nothing was started" in error
    assert str(missing_table) not in error and "data.table" not in error  # the table was never read
    assert not (tmp_path / "results").exists() and not (tmp_path / "checkpoints").exists()
    assert not tracebacks(job), job.tail()


@pytest.mark.timeout(1800)
def test_basic_auth_credentials_from_the_environment_or_the_uri(demo_table: str, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    short = {"train.epochs": 2}
    with MlflowServer(tmp_path / "auth-server", admin_password=PASSWORD) as auth:
        # a refused password is the user's input (exit 2), said in one line, before Spark starts
        with BackgroundJob("train_sweep.py", sweep_settings(demo_table, tmp_path / "wrong", auth.uri, "wrong", short),
                           job_log(tmp_path, "wrong"), env={"MLFLOW_TRACKING_USERNAME": "admin",
                                                            "MLFLOW_TRACKING_PASSWORD": "not-the-password"}) as wrong:
            wrong.driver_pid()
            code = wrong.wait(300)
        assert code == 2, wrong.tail()
        assert wrong.driver_seconds_to_exit() < 60, f"{wrong.driver_seconds_to_exit():.1f} s after the driver"
        [error] = [line for line in wrong.lines() if line.startswith("error:")]
        assert "refused the credentials" in error and "MLFLOW_TRACKING_PASSWORD" in error, error
        assert not tracebacks(wrong), wrong.tail()

        # the right credentials, from MLflow's variables or inside the URI (two sweeps, side by side)
        from_env = BackgroundJob(
            "train_sweep.py", sweep_settings(demo_table, tmp_path / "env", auth.uri, "env-credentials", short),
            job_log(tmp_path, "env"), env={"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": PASSWORD})
        in_uri = BackgroundJob(
            "train_sweep.py",
            sweep_settings(demo_table, tmp_path / "uri", auth.uri_with_credentials(), "uri-credentials", short),
            job_log(tmp_path, "uri"))
        with from_env, in_uri:
            codes = from_env.wait(), in_uri.wait()
        assert codes == (0, 0), f"{codes}\n--- env:\n{from_env.tail()}\n--- uri:\n{in_uri.tail()}"

        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
        admin = MlflowClient(tracking_uri=auth.uri)
        for sweep_id in ("env-credentials", "uri-credentials"):
            runs = sweep_runs(admin, sweep_id)
            assert set(runs.children) == CHILDREN
            assert set(runs.statuses().values()) == {"FINISHED"}, runs.statuses()
            for run in runs.all:
                leaks = {key: value for key, value in {**run.data.tags, **run.data.params}.items() if PASSWORD in value}
                assert not leaks, f"{run.info.run_name}: the password is in {sorted(leaks)}"
        tagged = sweep_runs(admin, "uri-credentials").parent.data.tags["lrsweep.tracking_uri"]
        assert tagged == f"http://***@127.0.0.1:{auth.port}"
    assert PASSWORD not in from_env.output
    leaked = [line for line in in_uri.lines() if PASSWORD in line]
    assert not leaked, f"the password is printed in {len(leaked)} lines of the job's output, e.g. {leaked[0]!r}"


@pytest.mark.timeout(1800)
def test_two_sweeps_starting_together_on_a_new_store_and_a_new_results_table(demo_table: str, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'new.db'}"
    shared = {"train.epochs": 2, "output.results_table": tmp_path / "results",
              "output.checkpoints": tmp_path / "checkpoints"}
    jobs = [BackgroundJob("train_sweep.py", sweep_settings(demo_table, tmp_path / name, store, name, shared),
                          job_log(tmp_path, name)) for name in ("together-a", "together-b")]
    with jobs[0], jobs[1]:
        codes = [job.wait() for job in jobs]
    assert codes == [0, 0], "\n---\n".join(f"{code}:\n{job.tail()}" for code, job in zip(codes, jobs, strict=True))

    table = results(tmp_path / "results")
    assert table.groupby("sweep_id").size().to_dict() == {"together-a": 3 * 2, "together-b": 3 * 2}
    assert not table.duplicated(["sweep_id", "round", "learning_rate", "epoch"]).any()
    local = MlflowClient(tracking_uri=store)
    for name in ("together-a", "together-b"):
        runs = sweep_runs(local, name)
        assert set(runs.children) == CHILDREN and set(runs.statuses().values()) == {"FINISHED"}, runs.statuses()
