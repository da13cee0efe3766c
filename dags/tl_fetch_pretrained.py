"""Fetch a pretrained model into S3 as a verified model folder: the first step of every strategy DAG."""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Param

from airflow_tl.operators import FetchPretrainedOperator

DEMO_BUCKET = "s3://airflow-tl-demo"

PARAMS = {
    "pretrained_uri": Param(
        f"{DEMO_BUCKET}/zoo/resnet18-digits-0-4",
        type="string",
        pattern=r"^(s3|torchvision|https?)://.+",
        description="s3:// model folder, torchvision://<arch>/<WEIGHTS>, https://…/<name>-<sha256>.pth, "
        "or https://…#sha256=<64 hex>",
    ),
    "work_uri": Param(
        f"{DEMO_BUCKET}/work", type="string", pattern=r"^s3://.+", description="s3:// prefix for run outputs"
    ),
    "architecture": Param(
        None, type=["null", "string"], description="torchvision architecture, when the URL's name is not one"
    ),
    "init": Param(
        "pretrained", enum=["pretrained", "random"], description="keep the weights, or the architecture only"
    ),
    "image_size": Param(None, type=["null", "integer"], minimum=8, description="input size; default: the source's"),
    "seed": Param(0, type="integer", description="seed for random initialisation"),
    "weights_mirror": Param(
        None,
        type=["null", "string"],
        pattern=r"^https?://.+",
        description="base URL serving torchvision's weight files by file name, for workers without internet",
    ),
}

with DAG(
    dag_id="tl_fetch_pretrained",
    description="Fetch and verify a pretrained model into an S3 model folder",
    schedule=None,
    catchup=False,
    tags=["airflow-tl", "transfer-learning"],
    render_template_as_native_obj=True,
    default_args={
        "retries": 2,
        "retry_delay": timedelta(seconds=30),
        "execution_timeout": timedelta(hours=1),
        "allowed_conf": sorted(PARAMS),  # a conf key that is not a Param fails the run (operators/conf.py)
    },
    doc_md="""
### Fetch a pretrained model

Reads a pretrained source, checks its sha256, loads it without unpickling anything and writes a
canonical model folder (`model.safetensors` + `model.json`) under
`<work_uri>/runs/<dag_id>/<run_id>/fetch_pretrained/`.

Sources: an `s3://` model folder, `torchvision://<arch>/<WEIGHTS>`, or an `https://` URL of a
file named `<name>-<sha256 prefix>.pth` or ending in `#sha256=<64 hex>`. With `init=random` only the
architecture is kept. Plain `http://` only with `[airflow_tl] allow_http`; every URI must lie under
`[airflow_tl] allowed_uri_prefixes` when that is set; credentials in a URL are redacted in the log, the
card and the XCom (docs/security.md).
""",
    params=PARAMS,
) as dag:
    FetchPretrainedOperator(
        task_id="fetch_pretrained",
        pretrained_uri="{{ params.pretrained_uri }}",
        architecture="{{ params.architecture }}",
        init="{{ params.init }}",
        image_size="{{ params.image_size }}",
        seed="{{ params.seed }}",
        weights_mirror="{{ params.weights_mirror }}",
        work_uri="{{ params.work_uri }}",
    )
