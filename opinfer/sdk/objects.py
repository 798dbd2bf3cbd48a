"""Response objects: JSON with attribute access, shaped like the `openai`
package's (`resp.choices[0].message.content`, `resp.data[0].embedding`,
`resp.opinfer.job_id`)."""

from __future__ import annotations

import copy
from typing import Any


class Obj(dict):
    """A dict whose keys are also attributes (recursively)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return wrap(self[name])
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, key):
        return wrap(dict.__getitem__(self, key))

    def get(self, key, default=None):
        return wrap(dict.get(self, key, default))

    def model_dump(self) -> dict:
        return copy.deepcopy(dict(self))

    to_dict = model_dump


class ObjList(list):
    def __getitem__(self, i):
        return wrap(list.__getitem__(self, i))

    def __iter__(self):
        return (wrap(v) for v in list.__iter__(self))


def wrap(value: Any) -> Any:
    if isinstance(value, dict) and not isinstance(value, Obj):
        return Obj(value)
    if isinstance(value, list) and not isinstance(value, ObjList):
        return ObjList(value)
    return value


def job_id_of(response) -> str:
    """The job id of a response object, a job view or a plain id."""
    if isinstance(response, str):
        return response
    if isinstance(response, dict):
        if "opinfer" in response and isinstance(dict.get(response, "opinfer"), dict):
            return dict.get(response, "opinfer")["job_id"]
        if response.get("object") == "opinfer.job":
            return response["id"]
    raise ValueError("not a response with an `opinfer.job_id`, a job view or a job id")
