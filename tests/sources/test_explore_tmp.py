import datetime as dt, json
import numpy as np
from las_builder.geobox import sample_geobox
from las_builder.sources.earthengine import EarthEngineSource
from conftest import resolve, invocations

def test_explore(fake_ee):
    def value(tree):
        keys = set(constant_keys(tree))
        print("VALUE keys", keys)
        if "CLOUDY_PIXEL_PERCENTAGE" in keys:
            return {"system:index": ["20210607T104021_20210607T104528_T31UFT"], "system:time_start": [1623062421000], "CLOUDY_PIXEL_PERCENTAGE": [3.5]}
        return {"s1": {"system:index": ["S1A_IW_GRDH_1SDV_20210606T173309_20210606T173334_038220_048274_8A2B"], "system:time_start": [1622999589000], "orbitProperties_pass": ["ASCENDING"]}, "dw_same": ["20210607T104021_20210607T104528_T31UFT"], "dw_day": []}
    def constant_keys(tree):
        inv = tree["functionInvocationValue"]
        return inv["arguments"]["input"]["dictionaryValue"]["values"].keys()
    fake_ee.value = value
    src = EarthEngineSource(dt.date(2021,6,1), dt.date(2021,9,30), labels=[("esa-worldcover", 2021), ("dynamic-world-v1", None), ("modis-12Q1-061", 2021)])
    s = src.fetch(sample_geobox(4.35, 50.85, 32, 10))
    names = set()
    for r in fake_ee.requests:
        names |= {c["functionName"] for c in invocations(resolve(r["body"]["expression"]))}
    print(sorted(names))
    json.dump(sorted(names), open("/tmp/used.json", "w"))
    for k, v in s.arrays.items(): print(k, v.dtype, v.shape, np.unique(v)[:5])
    print(s.record)
    print(json.dumps(fake_ee.requests[1]["body"], indent=1)[:6000])
