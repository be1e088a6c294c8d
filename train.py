import os

# Idle OpenMP threads sleep instead of spinning: on a CPU shared with other jobs, spinning
# made an MDEQ training step 8x slower (2357 ms vs 300 ms). Set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from deqzoo.train import main  # noqa: E402

if __name__ == "__main__":
    main()
