"""Device throughput: matrix products and a small CNN forward pass, as the self-check job measures them."""

import torch

from analysis.engine.selfcheck import measure_throughput


def main() -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    report = measure_throughput(device=device, matmul_size=1024, conv_batch=32, repeats=10)
    print(f"device {report.device} ({report.device_name}), torch {report.torch_version}, {report.threads} threads")
    print(
        f"matmul 1024²: {report.matmul_gflops:.1f} GFLOP/s, max relative error vs float64 "
        f"{report.matmul_max_relative_error:.1e}"
    )
    print(f"5-layer CNN forward, 112 px: {report.conv_images_per_second:.0f} images/s")


if __name__ == "__main__":
    main()
