"""vLLM's CPU engine settings: small hosts give the teacher every core (no vLLM needed to check the rule)."""

from __future__ import annotations

from stage1_teacher.backends.vllm import SMALL_CPU_HOST_CORES, cpu_engine_env


def test_small_hosts_reserve_no_core_for_the_scheduler():
    for cores in (1, 2, SMALL_CPU_HOST_CORES):
        assert cpu_engine_env(cores) == {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}, cores


def test_larger_hosts_keep_vllms_reserved_core():
    for cores in (SMALL_CPU_HOST_CORES + 1, 64):
        assert cpu_engine_env(cores) == {"VLLM_CPU_KVCACHE_SPACE": "1"}, cores
