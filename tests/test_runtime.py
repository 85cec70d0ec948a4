"""The CPU runtime chosen at start-up (iste.runtime): wait policy, thread count, --threads."""

import os
import platform
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from iste import runtime
from iste.cli.main import main
from iste.data.imagewrite import write_image
from iste.models.checkpoint import save_model
from iste.models.registry import build_model
from model_zoo import tiny_config

SRC = str(Path(__file__).resolve().parents[1] / "src")
# the source first, then any path the tests themselves run with (packages installed beside)
PYTHONPATH = os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")]))
_OMP_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "ISTE_THREADS",
             *(v for names in runtime.PRIMITIVE_CACHE_ENV.values() for v in names))


def _quota(tmp_path, text: str) -> str:
    """A process's proc folder (for runtime's ``proc``) in a container's cgroup v2 root whose
    cpu.max holds ``text``."""
    return _cgroups(tmp_path, "0::/\n", {"cpu.max": text})


def _cgroups(tmp_path, cgroup: str, files: dict, mounts: str = "") -> str:
    """A fake ``/proc/self`` (its ``cgroup`` text) over a cgroup v2 hierarchy mounted at
    tmp_path/cg2 and v1 cpu controller at tmp_path/cpu (``mounts``: more mountinfo lines;
    PATH in them is tmp_path); ``files``: relative path under tmp_path -> text."""
    proc = tmp_path / "proc"
    proc.mkdir(parents=True, exist_ok=True)
    (proc / "cgroup").write_text(cgroup)
    (proc / "mountinfo").write_text(
        f"31 23 0:28 / {tmp_path}/cg2 rw,relatime - cgroup2 cgroup2 rw\n"
        f"32 31 0:29 / {tmp_path}/cpu rw,relatime - cgroup cgroup rw,cpu,cpuacct\n"
        f"35 31 0:32 / {tmp_path}/memory rw,relatime - cgroup cgroup rw,memory\n"
        + mounts.replace("PATH", str(tmp_path)))
    for name, text in files.items():
        path = tmp_path / ("cg2" if name == "cpu.max" else "") / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(proc)


def test_a_quota_on_a_parent_cgroup_binds_its_children(tmp_path):
    # only /sys/fs/cgroup/cpu.max was read: a quota on a parent cgroup (systemd's CPUQuota=,
    # a batch job's cgroup above its step) or under cgroup v1 left every core's threads
    v1 = _cgroups(tmp_path / "v1", "4:memory:/job\n2:cpu,cpuacct:/slurm/job7/step0\n0::/\n",
                  {"cpu/slurm/job7/step0/cpu.cfs_quota_us": "-1\n",
                   "cpu/slurm/job7/step0/cpu.cfs_period_us": "100000\n",
                   "cpu/slurm/job7/cpu.cfs_quota_us": "150000\n",
                   "cpu/slurm/job7/cpu.cfs_period_us": "100000\n",
                   "cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n",
                   "memory/slurm/job7/step0/cpu.cfs_quota_us": "10000\n"})
    assert runtime.cgroup_cpu_quota(v1) == 2
    v2 = _cgroups(tmp_path / "v2", "0::/system.slice/lab.service/run\n",
                  {"cg2/system.slice/lab.service/cpu.max": "300000 100000\n",
                   "cg2/system.slice/lab.service/run/cpu.max": "max 100000\n",
                   "cg2/system.slice/cpu.max": "800000 100000\n"})
    assert runtime.cgroup_cpu_quota(v2) == 3
    assert runtime.cgroup_cpu_quota(str(tmp_path / "absent")) is None
    # a container: its own cgroup is the mount's root, which mountinfo names (a space in it)
    inside = _cgroups(tmp_path / "c", "0::/docker/a b\n", {},
                      "40 23 0:40 /docker/a\\040b PATH/mnt\\040x rw - cgroup2 cgroup2 rw\n")
    (tmp_path / "c" / "mnt x").mkdir()
    (tmp_path / "c" / "mnt x" / "cpu.max").write_text("100000 100000\n")
    assert runtime.cgroup_cpu_quota(inside) == 1


def test_the_tightest_cgroup_memory_limit_leaves_its_limit_less_the_unreclaimable_use(tmp_path):
    # the memory plan read MemAvailable alone: past a cgroup's limit the kernel kills the job
    mib = 2**20
    v2 = _cgroups(tmp_path / "v2", "0::/system.slice/lab.service/run\n",
                  {"cg2/system.slice/lab.service/memory.max": f"{3000 * mib}\n",
                   "cg2/system.slice/lab.service/memory.current": f"{1000 * mib}\n",
                   "cg2/system.slice/lab.service/memory.stat": f"anon 1\ninactive_file "
                                                               f"{200 * mib}\n",
                   "cg2/system.slice/lab.service/run/memory.max": "max\n",
                   "cg2/system.slice/memory.max": f"{8000 * mib}\n"})
    assert runtime.cgroup_memory_available(v2) == 2200 * mib  # 3000 - (1000 - 200)
    v1 = _cgroups(tmp_path / "v1", "4:memory:/job\n2:cpu,cpuacct:/job\n0::/\n",
                  {"memory/job/memory.limit_in_bytes": f"{500 * mib}\n",
                   "memory/job/memory.usage_in_bytes": f"{600 * mib}\n",
                   "memory/memory.limit_in_bytes": "9223372036854771712\n",
                   "cpu/job/memory.limit_in_bytes": f"{mib}\n"})  # not the memory hierarchy
    assert runtime.cgroup_memory_available(v1) == 0  # over its limit: nothing left
    no_limit = _cgroups(tmp_path / "none", "0::/\n", {"cg2/memory.max": "max\n"})
    assert runtime.cgroup_memory_available(no_limit) is None
    assert runtime.cgroup_memory_available(str(tmp_path / "absent")) is None


def test_passive_wait_policy_unless_the_user_chose(tmp_path):
    no_quota = _quota(tmp_path, "max 100000\n")
    env: dict = {}
    chosen = runtime.configure_environment(env, proc=no_quota)
    assert chosen["OMP_WAIT_POLICY"] == "PASSIVE" and "OMP_NUM_THREADS" not in chosen
    assert env == chosen
    for user in ({"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "300000"}):
        env = dict(user)
        assert "OMP_WAIT_POLICY" not in runtime.configure_environment(env, proc=no_quota)
        assert {k: v for k, v in env.items() if k.startswith(("OMP", "GOMP"))} == user


def test_the_primitive_caches_are_bounded_unless_the_user_sized_them(tmp_path):
    no_quota = _quota(tmp_path, "max 100000\n")
    bound = str(runtime.PRIMITIVE_CACHE)
    env: dict = {}
    runtime.configure_environment(env, proc=no_quota)
    assert env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == env["LRU_CACHE_CAPACITY"] == bound
    # oneDNN's old prefix counts as the user's choice too
    for user in ({"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "1024"},
                 {"DNNL_PRIMITIVE_CACHE_CAPACITY": "1024"}):
        env = dict(user)
        chosen = runtime.configure_environment(env, proc=no_quota)
        assert "ONEDNN_PRIMITIVE_CACHE_CAPACITY" not in chosen and chosen["LRU_CACHE_CAPACITY"]
        assert env.items() >= user.items()
    env = {"LRU_CACHE_CAPACITY": "16"}
    assert "LRU_CACHE_CAPACITY" not in runtime.configure_environment(env, proc=no_quota)
    assert env["LRU_CACHE_CAPACITY"] == "16"


def test_iste_threads_becomes_omp_num_threads_unless_that_is_set(tmp_path):
    no_quota = _quota(tmp_path, "max 100000\n")
    env = {"ISTE_THREADS": "3"}
    runtime.configure_environment(env, proc=no_quota)
    assert env["OMP_NUM_THREADS"] == "3"
    env = {"ISTE_THREADS": "3", "OMP_NUM_THREADS": "5"}
    runtime.configure_environment(env, proc=no_quota)
    assert env["OMP_NUM_THREADS"] == "5"
    env = {"ISTE_THREADS": "many"}  # left for set_threads to report
    runtime.configure_environment(env, proc=no_quota)
    assert "OMP_NUM_THREADS" not in env


def test_a_cgroup_quota_below_the_cpus_caps_the_threads(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setattr(runtime, "threads_per_core", lambda: 1)
    env: dict = {}
    runtime.configure_environment(env, proc=_quota(tmp_path, "250000 100000\n"))
    assert env["OMP_NUM_THREADS"] == "3"  # 2.5 CPUs, rounded up
    assert runtime.cgroup_cpu_quota(_quota(tmp_path, "max 100000\n")) is None
    assert runtime.cgroup_cpu_quota(str(tmp_path / "absent")) is None
    env = {}
    runtime.configure_environment(env, proc=_quota(tmp_path, "3200000 100000\n"))
    assert "OMP_NUM_THREADS" not in env  # a quota above the CPUs changes nothing


def test_torch_default_on_hyper_threaded_cores(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setattr(runtime, "threads_per_core", lambda: 2)  # torch starts 8
    assert runtime.startup_threads(_quota(tmp_path, "max 100000\n")) is None
    assert runtime.startup_threads(_quota(tmp_path, "800000 100000\n")) == 4  # 8 CPUs, 2 per core
    env = {"OMP_NUM_THREADS": "8"}  # the user's choice stands
    runtime.configure_environment(env, proc=_quota(tmp_path, "200000 100000\n"))
    assert env["OMP_NUM_THREADS"] == "8"


def test_requested_threads_prefers_the_option_and_rejects_nonsense():
    assert runtime.requested_threads(None, {}) is None
    assert runtime.requested_threads(None, {"ISTE_THREADS": "2"}) == 2
    assert runtime.requested_threads(4, {"ISTE_THREADS": "2"}) == 4
    for bad in (0, -1, "x"):
        with pytest.raises(ValueError, match=">= 1"):
            runtime.requested_threads(bad, {})
    with pytest.raises(ValueError, match="ISTE_THREADS"):
        runtime.requested_threads(None, {"ISTE_THREADS": "0"})
    for grouped in ("1_1", "\uff11"):  # int() read ISTE_THREADS=1_1 as 11 threads
        with pytest.raises(ValueError, match="ISTE_THREADS must be a whole number"):
            runtime.requested_threads(None, {"ISTE_THREADS": grouped})
    # thousands made OpenMP hang, abort or crash the process (--threads 100000: SIGSEGV)
    too_many = runtime.MAX_THREADS_PER_CPU * os.cpu_count() + 1
    with pytest.raises(ValueError, match=rf"--threads {too_many} is more than 4 per CPU"):
        runtime.requested_threads(too_many, {})
    assert runtime.requested_threads(too_many - 1, {}) == too_many - 1


def _fresh_python(code: str, **env_vars) -> str:
    env = {k: v for k, v in os.environ.items() if k not in _OMP_VARS}
    env.update(env_vars, PYTHONPATH=PYTHONPATH)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_importing_iste_sets_the_environment_before_torch_loads():
    code = ("import os, sys; import iste; from iste import runtime; import torch; "
            "print(os.environ['OMP_WAIT_POLICY'], torch.get_num_threads(), "
            "runtime.STARTUP['late'])")
    assert _fresh_python(code, ISTE_THREADS="1") == "PASSIVE 1 False"
    assert _fresh_python(code, ISTE_THREADS="1", OMP_WAIT_POLICY="ACTIVE") == "ACTIVE 1 False"
    late = "import torch; " + code.replace("import os, sys; ", "import os, sys; ", 1)
    assert _fresh_python(late, ISTE_THREADS="1").endswith("True")


_EVICTION_PROBE = """
import torch
op = torch.ops.mkldnn._linear_pointwise  # what iste's linear layers run on CPU
w, b = torch.rand(8, 16), torch.rand(8)
for rows in [1, *range(2, {shapes} + 2), 1]:  # one shape, then more than the bound, then it
    print("rows", rows, flush=True)
    op(torch.rand(rows, 16), w, b, "none", [], "")
"""


def _first_shape_again(imports: str, **env_vars) -> str:
    """oneDNN's report of the primitive for a linear of one shape, made again after
    PRIMITIVE_CACHE + 8 other shapes: "cache_hit" when the first one was kept, "cache_miss"
    when evicted."""
    code = imports + _EVICTION_PROBE.format(shapes=runtime.PRIMITIVE_CACHE + 8)
    out = _fresh_python(code, ONEDNN_VERBOSE="profile_create", **env_vars)
    last = out[out.rindex("rows 1\n"):]
    return re.search(r"create:(cache_\w+)", last).group(1)


def test_the_primitive_cache_bound_reaches_onednn():
    # fresh processes: oneDNN reads its capacity once, at its first primitive
    assert _first_shape_again("import iste\n") == "cache_miss"  # evicted: the cache is bounded
    assert _first_shape_again("") == "cache_hit"  # torch alone keeps 1 024
    assert _first_shape_again("import iste\n", ONEDNN_PRIMITIVE_CACHE_CAPACITY="1024") \
        == "cache_hit"  # the user's size is kept


def _libgomp_spin_count(code: str, **env_vars) -> str | None:
    """The spin count GNU OpenMP runs with in a fresh process (its OMP_DISPLAY_ENV report);
    None when torch's OpenMP is not libgomp."""
    env = {k: v for k, v in os.environ.items() if k not in _OMP_VARS}
    env.update(env_vars, PYTHONPATH=PYTHONPATH, OMP_DISPLAY_ENV="VERBOSE")
    err = subprocess.run([sys.executable, "-c", code + "; torch.ones(64, 64) @ torch.ones(64, 64)"],
                         env=env, capture_output=True, text=True, check=True).stderr
    found = re.search(r"GOMP_SPINCOUNT = '(\d+)'", err)
    return found.group(1) if found else None


def test_the_wait_policy_reaches_torchs_openmp():
    spins = _libgomp_spin_count("import iste, torch")
    if spins is None:
        pytest.skip("torch's OpenMP here is not GNU libgomp (no OMP_DISPLAY_ENV report)")
    assert spins == "0"  # passive: threads sleep at once at a barrier
    assert _libgomp_spin_count("import torch") == "300000"  # libgomp's own default
    assert _libgomp_spin_count("import iste, torch", GOMP_SPINCOUNT="30000") == "30000"


@pytest.fixture()
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_threads_option_applies_to_plain_images(tmp_path, restore_threads, monkeypatch):
    monkeypatch.delenv("ISTE_THREADS", raising=False)
    image = tmp_path / "in.png"
    write_image(image, (np.random.default_rng(1).random((12, 10, 3)) * 255).astype(np.uint8))
    ckpt = save_model(build_model(tiny_config("liif")), tmp_path / "tiny.safetensors")
    args = ["upscale", str(image), "-s", "2", "--model", str(ckpt)]
    assert main([*args, "-o", str(tmp_path / "a.png"), "--threads", "3"]) == 0
    assert torch.get_num_threads() == 3
    monkeypatch.setenv("ISTE_THREADS", "2")
    assert main([*args, "-o", str(tmp_path / "b.png")]) == 0
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("option,env,message", [
    (["--threads", "0"], None, "--threads"),
    ([], "zero", "ISTE_THREADS"),
    (["--threads", "100000"], None, "--threads 100000 is more than 4 per CPU"),
    ([], "100000", "ISTE_THREADS 100000 is more than 4 per CPU"),
])
def test_bad_thread_counts_are_one_line_errors(tmp_path, capsys, monkeypatch, restore_threads,
                                                option, env, message):
    if env is not None:
        monkeypatch.setenv("ISTE_THREADS", env)
    out = tmp_path / "o.png"
    assert main(["upscale", "nothing.png", "-s", "2", "-o", str(out), *option]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("iste: error:") and message in err and len(err.splitlines()) == 1
    assert not out.exists()


_HEAP_PROBE = (
    "import sys; from iste import runtime; "
    "rss = lambda: int(next(l for l in open('/proc/self/status') "
    "if l.startswith('VmRSS')).split()[1]); "
    "kept = runtime.keep_freed_memory() if sys.argv[1] == 'keep' else False; "
    "before = rss(); block = b'1' * (64 << 20); del block; "  # 64 MB written, then freed
    "print(kept, (rss() - before) >> 10)")


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc",
                    reason="mallopt and /proc/self/status are glibc's and Linux's")
def test_keep_freed_memory_keeps_a_freed_block_instead_of_unmapping_it():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["PYTHONPATH"] = PYTHONPATH

    def probe(mode: str, **extra) -> list[str]:
        out = subprocess.run([sys.executable, "-c", _HEAP_PROBE, mode], env={**env, **extra},
                             capture_output=True, text=True, check=True).stdout
        return out.split()

    kept, grown = probe("keep")
    assert kept == "True" and int(grown) >= 60  # MB still held: reused by the next tensors
    kept, grown = probe("default")
    assert kept == "False" and int(grown) < 8  # glibc's default unmapped it
    # a malloc tuned by the user through its environment is left alone
    kept, _ = probe("keep", MALLOC_TRIM_THRESHOLD_="131072")
    assert kept == "False"


def test_an_invalid_iste_threads_is_one_error_in_a_fresh_process_and_for_the_api():
    env = {k: v for k, v in os.environ.items() if k not in _OMP_VARS}
    env.update(PYTHONPATH=PYTHONPATH, ISTE_THREADS="garbage")
    run = subprocess.run([sys.executable, "-m", "iste", "upscale", "x.png", "-s", "2", "-o",
                          "y.png"], env=env, capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.strip() == ("iste: error: ISTE_THREADS must be a whole number >= 1, "
                                  "got 'garbage'")
    code = ("import iste\ntry:\n    iste.load()\nexcept ValueError as e:\n    print(e)")
    assert _fresh_python(code, ISTE_THREADS="0") == \
        "ISTE_THREADS must be a whole number >= 1, got '0'"


@pytest.mark.parametrize("name,message", [("meta", "holds no data"),
                                          ("mps", "is not available here"),
                                          ("xla", "is not available here")])
def test_devices_this_machine_cannot_run_are_refused_in_one_line(name, message, monkeypatch):
    if name == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=message):
        runtime.pick_device(name)
    assert runtime.pick_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("build,visible,said", [
    (None, None, "install the CUDA build of torch"),
    ("12.8", "", "CUDA_VISIBLE_DEVICES='' shows this process no GPU"),
    ("12.8", "-1", "CUDA_VISIBLE_DEVICES='-1' shows this process no GPU"),
    ("12.8", None, "finds no GPU: is its driver installed and loaded?")])
def test_no_cuda_device_says_why(build, visible, said, monkeypatch):
    """A CUDA build of torch under CUDA_VISIBLE_DEVICES="" (a scheduler's CPU job) was told to
    "install the CUDA build of torch for a GPU"."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", build)
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    with pytest.raises(ValueError) as err:
        runtime.pick_device("cuda")
    assert str(err.value).startswith("device 'cuda': no CUDA device here (") and said in str(
        err.value)
    if build is not None:
        assert "install the CUDA build" not in str(err.value)


@pytest.mark.parametrize("variables,said", [
    ({"MKL_NUM_THREADS": "abc"}, "MKL_NUM_THREADS='abc' is no thread count: torch runs "),
    ({"OMP_NUM_THREADS": "-1", "MKL_NUM_THREADS": "4,2"},
     "OMP_NUM_THREADS='-1' and MKL_NUM_THREADS='4,2' are no thread count"),
    ({"OMP_NUM_THREADS": "4,2", "MKL_NUM_THREADS": " "}, None),  # OpenMP's nested counts
    ({"MKL_NUM_THREADS": "abc", "ISTE_THREADS": "1"}, None),  # the count is iste's
])
def test_a_thread_variable_that_holds_no_count_is_a_warning(variables, said, monkeypatch,
                                                             restore_threads):
    """torch ran on one thread under MKL_NUM_THREADS=abc (or 4,2) without a word."""
    monkeypatch.delenv("ISTE_THREADS", raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["data", "list"]) == 0
        warned = [str(w.message) for w in caught if "thread count" in str(w.message)]
        assert main(["data", "--threads", "1", "list"]) == 0  # a count given: nothing to say
    if said is None:
        assert warned == []
    else:
        assert len(warned) == 1 and warned[0].startswith(said)
    assert len([w for w in caught if "thread count" in str(w.message)]) == len(warned)


def test_iste_load_warns_of_a_thread_variable_that_holds_no_count(monkeypatch, tmp_path):
    """A notebook under MKL_NUM_THREADS=abc ran torch on one thread without a word: the
    command line warned (above), iste.load did not. The warning points at the caller."""
    import iste

    tiny_model = tmp_path / "tiny.safetensors"
    save_model(build_model(tiny_config("iste")), tiny_model)
    monkeypatch.delenv("ISTE_THREADS", raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "abc")
    with pytest.warns(UserWarning, match="MKL_NUM_THREADS='abc' is no thread count") as caught:
        iste.load(tiny_model)
    assert [Path(w.filename).name for w in caught] == [Path(__file__).name]
    monkeypatch.setenv("MKL_NUM_THREADS", "2")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        iste.load(tiny_model)


def test_a_command_that_loads_a_model_warns_of_thread_variables_once(monkeypatch, tmp_path,
                                                                     restore_threads):
    """The command line says it (and not with --threads); the model it loads does not say it
    again."""
    tiny_model = tmp_path / "tiny.safetensors"
    save_model(build_model(tiny_config("iste")), tiny_model)
    write_image(tmp_path / "a.png", np.full((12, 12, 3), 200, np.uint8))
    monkeypatch.delenv("ISTE_THREADS", raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "abc")
    args = ["upscale", str(tmp_path / "a.png"), "-s", "2", "--model", str(tiny_model)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main([*args, "-o", str(tmp_path / "b.png")]) == 0
        assert main([*args, "-o", str(tmp_path / "c.png"), "--threads", "1"]) == 0
    said = [w for w in caught if "no thread count" in str(w.message)]
    assert len(said) == 1


def test_the_bench_takes_iste_threads_when_no_option_is_given(monkeypatch, restore_threads):
    seen = []
    monkeypatch.setattr("iste.bench.runner.run_sections",
                        lambda cfg, *a, **k: seen.append(cfg.threads) or {})
    monkeypatch.setattr("iste.bench.runner.markdown", lambda results: "")
    monkeypatch.setenv("ISTE_THREADS", "1")
    assert main(["bench", "--sections", "engine"]) == 0
    assert main(["bench", "--sections", "engine", "--threads", "3"]) == 0
    monkeypatch.delenv("ISTE_THREADS")
    assert main(["bench", "--sections", "engine"]) == 0
    assert seen == [1, 3, 2]


def test_cores_are_contended_where_other_processes_used_them(tmp_path, monkeypatch):
    hz = os.sysconf("SC_CLK_TCK")
    clock = [100.0]
    monkeypatch.setattr("time.monotonic", lambda: clock[0])

    def cpu(seconds_all: float, seconds_mine: float, at: float):
        # /proc/stat: user nice system idle iowait irq softirq steal; PROC/stat: utime stime
        busy = round(seconds_all * hz)
        (tmp_path / "stat").write_text(f"cpu  {busy} 0 0 999999 5 0 0 0 0 0\ncpu0 1 2 3\n")
        (tmp_path / "self").mkdir(exist_ok=True)
        mine = round(seconds_mine * hz)
        (tmp_path / "self" / "stat").write_text(
            f"42 (iste (a) b) R 1 1 1 0 -1 0 0 0 0 0 {mine} 0 0 0 20 0 3 0 1 2 3\n")
        clock[0] = at

    cpu(10, 5, 100.0)
    watch = runtime.CoreWatch(str(tmp_path / "self"), str(tmp_path))
    cpu(12, 7, 101.0)  # all the CPU time was ours (2 cores' worth): quiet
    assert not watch.contended()
    cpu(14.8, 8.8, 102.0)  # 1.8 s used, 0.8 of it by others
    assert watch.contended()
    cpu(14.9, 8.8, 102.1)  # 0.1 s since: too short to tell, the last answer kept
    assert watch.contended()
    cpu(15.2, 9.0, 103.0)  # 0.4 s used, 0.2 by others since 102.0
    assert not watch.contended()
    assert not runtime.CoreWatch(str(tmp_path / "nowhere"), str(tmp_path / "no")).contended()


def test_one_thread_if_contended_sets_the_threads_back(tmp_path):
    class Watch:
        def __init__(self, answer):
            self.answer = answer

        def contended(self):
            return self.answer

    own = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with runtime.one_thread_if_contended(Watch(True)) as threads:
            assert threads == 1 == torch.get_num_threads()
        assert torch.get_num_threads() == 2
        with runtime.one_thread_if_contended(Watch(False)) as threads:
            assert threads == 2 == torch.get_num_threads()
    finally:
        torch.set_num_threads(own)


def test_a_device_index_without_a_gpu_is_refused_as_cuda_n_is(monkeypatch):
    """``iste.load(device=0)`` on a CPU-only machine said "unknown device 0 (cpu, cuda,
    cuda:N ...): Cannot access accelerator device when none is available." (torch's words):
    0 is no unknown device, it is a GPU's index, and the machine has none."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for index in (0, 1):
        with pytest.raises(ValueError) as err:
            runtime.pick_device(index)
        assert str(err.value) == f"device {index}: no CUDA device here ({runtime._why_no_cuda()})"
    with pytest.raises(ValueError, match="^unknown device -1 "):
        runtime.pick_device(-1)
