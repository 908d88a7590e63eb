"""Install gdat, aoe_full and the launchers.

Install torch first (``pip install torch==2.13.0``): ``install_requires`` names torch
with a range the installed build satisfies, so pip never pulls a CUDA wheel onto a
CPU machine.

Supported torch: gdat tunes with torch 2.11 to 2.14 (2.13.0 pinned for the suite;
2.11.0 and 2.14.1 tested by ``./run.sh test``'s compatibility pass).  It installs
beside torch from 2.4, and with a torch older than 2.11 every DDP runs as stock DDP
with one line saying that tuning needs torch >= 2.11.
"""
from setuptools import setup

# aoe_full's real models (Hugging Face BERT, GPT-2, ResNet from configs) and its
# engines (ONNX Runtime through torch.onnx's exporter, OpenVINO); each accepts
# torch 2.13.0 without replacing it.  The test extra includes them so that CI
# runs the real models and the engines.
# gdat's folders, in the order data flows through them (docs/architecture.md)
STAGES = ["core", "reducer", "profiling", "schedule", "decide", "bank", "report", "tune", "demo"]

AOE = ["transformers==5.24.0", "onnx==1.23.2", "onnxscript==0.7.2", "onnxruntime==1.31.1",
       "openvino==2026.4.1"]

setup(
    name="gdat",
    version="0.1.0",
    description="Gradient auto-tuner for data-parallel PyTorch (AOE-style GDAT, SGAT, OPAT)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["gdat", *(f"gdat.{p}" for p in STAGES), "aoe_full", "launch"],
    install_requires=["torch>=2.4", "numpy"],
    extras_require={
        # the frameworks are pinned to releases tested with torch 2.13.0; expecttest lets
        # tests import PyTorch's own DDP suite (torch.testing._internal)
        # pytest-xdist runs three test files at once on two cores (./run.sh test): much of a spawned job's time is
        # one process starting or waiting, which the other file's job fills; its loadgroup needs the
        # node ids of pytest before 9.2
        "test": ["pytest==9.1.1", "pytest-xdist==3.8.0", "hypothesis", "matplotlib", "expecttest", "accelerate==1.15.0",
                 "lightning==2.6.6", "uv==0.13.9", *AOE],
        # the compatibility pass's venvs (./run.sh compat): the tests it runs on another torch
        "compat": ["pytest==9.1.1", "pytest-xdist==3.8.0", "expecttest", "hypothesis"],
        "mpi": ["mpi4py", "mpich"],
        "npu": ["torch-npu"],
        "plot": ["matplotlib"],
        "aoe": AOE,
    },
    entry_points={
        "console_scripts": [
            "gdat=gdat.cli:main",
            "gdat-run=gdat.run:main",
            "aoe=aoe_full.cli:main",
            "gdat-testbed=launch.testbed:main",
        ],
        # aoe_full plugs its operator/subgraph bank into gdat's DDP (--gdat-aoe-bank)
        "gdat.model_transforms": ["aoe_bank=aoe_full.apply:bank_transform"],
    },
)
