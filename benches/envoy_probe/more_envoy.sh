#!/bin/bash
P=${1:-18101}
echo "== B"; curl -s -m 3 "http://127.0.0.1:$P/b" -D - -o /dev/null | grep -i "x-probe\|^HTTP" | tr ';' '\n'
echo "== C"; curl -s -m 3 "http://127.0.0.1:$P/c" --data-binary 'hello!' -D - | tr ';' '\n'
echo "== C chunked"; curl -s -m 3 "http://127.0.0.1:$P/c" -H 'transfer-encoding: chunked' --data-binary 'hello!' -D - | tr ';' '\n'
echo "== L"; curl -s -m 3 "http://127.0.0.1:$P/l" | tr ';' '\n'
echo "== J"; curl -s -m 3 "http://127.0.0.1:$P/j" -D - 
echo; echo "== E"; curl -s -m 3 "http://127.0.0.1:$P/e" -D - 
echo; echo "== G"; curl -s -m 3 "http://127.0.0.1:$P/g" -D - 
