# Generates probe.wat: a proxy-wasm 0.2.1 module that calls hostcalls with edge
# arguments and reports each status (and value) so weir and Envoy can be compared.
import struct, sys

DATA = bytearray()
DBASE = 1024
def s(b):
    if isinstance(b, str): b = b.encode()
    off = DBASE + len(DATA); DATA.extend(b); DATA.extend(b'\0' * ((-len(DATA)) % 4))
    return f"(i32.const {off}) (i32.const {len(b)})"
def sp(b):  # pointer only
    if isinstance(b, str): b = b.encode()
    off = DBASE + len(DATA); DATA.extend(b); DATA.extend(b'\0' * ((-len(DATA)) % 4))
    return off, len(b)
def hmap(pairs):
    out = struct.pack('<I', len(pairs))
    for k, v in pairs: out += struct.pack('<II', len(k), len(v))
    for k, v in pairs: out += k.encode() + b'\0' + v.encode() + b'\0'
    return s(out)

R = "(i32.const 16) (i32.const 20)"   # (ptr, len) return slots
I = "(i32.const 24)"                   # i32/i64 return slot
OOB = "(i32.const 0x7ffffff0)"

def probes_a():
    P = []
    a = lambda label, expr, kind=None: P.append((label, expr, kind))
    a("log6", f"(call $proxy_log (i32.const 6) {s('x')})")
    a("log0", f"(call $proxy_log (i32.const 0) {s('probe trace')})")
    a("loglevel", f"(call $proxy_get_log_level {I})")
    a("time", f"(call $proxy_get_current_time_nanoseconds {I})")
    for label, path, kind in [
        ("p_unknown", "foo\0bar", "buf"), ("p_path", "request\0path", "buf"),
        ("p_path_nul", "request\0path\0", "buf"), ("p_method", "request\0method", "buf"),
        ("p_scheme", "request\0scheme", "buf"), ("p_protocol", "request\0protocol", "buf"),
        ("p_url_path", "request\0url_path", "buf"), ("p_host", "request\0host", "buf"),
        ("p_hdr_rep", "request\0headers\0x-a", "buf"), ("p_hdr_miss", "request\0headers\0x-none", "buf"),
        ("p_ua", "request\0useragent", "buf"), ("p_referer", "request\0referer", "buf"),
        ("p_resp_code", "response\0code", "buf"), ("p_src_port", "source\0port", "len"),
        ("p_src_addr", "source\0address", "len"), ("p_dst_port", "destination\0port", "len"),
        ("p_mtls", "connection\0mtls", "buf"), ("p_sni", "connection\0requested_server_name", "buf"),
        ("p_conn_id", "connection\0id", "len"), ("p_plugin_name", "plugin_name", "buf"),
        ("p_root_id", "plugin_root_id", "buf"), ("p_vm_id", "plugin_vm_id", "buf"),
        ("p_route", "route_name", "buf"), ("p_cluster", "cluster_name", "buf"),
        ("p_time", "request\0time", "len"), ("p_id", "request\0id", "len"),
        ("p_size", "request\0size", "buf"), ("p_total", "request\0total_size", "buf"),
        ("p_up_addr", "upstream\0address", "len"), ("p_request", "request", "len"),
        ("p_empty", "", "buf"), ("p_query", "request\0query", "buf"),
        ("p_dur", "request\0duration", "len"), ("p_xroute", "xds\0route_name", "buf"), ("p_xcluster", "xds\0cluster_name", "buf"),
    ]:
        a(label, f"(call $proxy_get_property {s(path)} {R})", kind)
    a("setprop", f"(call $proxy_set_property {s('foo')} {s('bar')})")
    a("getprop", f"(call $proxy_get_property {s('foo')} {R})", "buf")
    a("setprop_path", f"(call $proxy_set_property {s('request'+chr(0)+'path')} {s('/zz')})")
    a("getprop_path2", f"(call $proxy_get_property {s('request'+chr(0)+'path')} {R})", "buf")
    a("h_miss", f"(call $proxy_get_header_map_value (i32.const 0) {s('x-none')} {R})", "buf")
    a("h_empty", f"(call $proxy_get_header_map_value (i32.const 0) {s('x-empty')} {R})", "buf")
    a("h_rep", f"(call $proxy_get_header_map_value (i32.const 0) {s('x-a')} {R})", "buf")
    a("h_upper", f"(call $proxy_get_header_map_value (i32.const 0) {s('X-A')} {R})", "buf")
    a("h_authority", f"(call $proxy_get_header_map_value (i32.const 0) {s(':authority')} {R})", "buf")
    a("h_host", f"(call $proxy_get_header_map_value (i32.const 0) {s('host')} {R})", "buf")
    a("h_scheme", f"(call $proxy_get_header_map_value (i32.const 0) {s(':scheme')} {R})", "buf")
    a("rh_get", f"(call $proxy_get_header_map_value (i32.const 2) {s(':status')} {R})", "buf")
    a("rh_add", f"(call $proxy_add_header_map_value (i32.const 2) {s('x-r')} {s('1')})")
    a("rh_pairs", f"(call $proxy_get_header_map_pairs (i32.const 2) {R})", "len")
    a("rt_pairs", f"(call $proxy_get_header_map_pairs (i32.const 1) {R})", "len")
    a("rt_add", f"(call $proxy_add_header_map_value (i32.const 1) {s('x-t')} {s('1')})")
    a("cr_pairs", f"(call $proxy_get_header_map_pairs (i32.const 6) {R})", "len")
    a("h_size", f"(call $proxy_get_header_map_size (i32.const 0) {I})")
    a("h_pairs99", f"(call $proxy_get_header_map_pairs (i32.const 99) {R})", "len")
    a("h_badname", f"(call $proxy_replace_header_map_value (i32.const 0) {s('bad name')} {s('v')})")
    a("h_setupper", f"(call $proxy_replace_header_map_value (i32.const 0) {s('X-Upper')} {s('v')})")
    a("h_getupper", f"(call $proxy_get_header_map_value (i32.const 0) {s('x-upper')} {R})", "buf")
    a("h_crlf", f"(call $proxy_add_header_map_value (i32.const 0) {s('x-crlf')} {s('a'+chr(13)+chr(10)+'b')})")
    a("h_getcrlf", f"(call $proxy_get_header_map_value (i32.const 0) {s('x-crlf')} {R})", "buf")
    a("h_nul", f"(call $proxy_add_header_map_value (i32.const 0) {s('x-nul')} {s('a'+chr(0)+'b')})")
    a("h_getnul", f"(call $proxy_get_header_map_value (i32.const 0) {s('x-nul')} {R})", "buf")
    a("h_rm_absent", f"(call $proxy_remove_header_map_value (i32.const 0) {s('x-absent')})")
    a("h_add_rep", f"(call $proxy_add_header_map_value (i32.const 0) {s('x-a')} {s('3')})")
    a("p_hdr_rep2", f"(call $proxy_get_property {s('request'+chr(0)+'headers'+chr(0)+'x-a')} {R})", "buf")
    a("h_set_path", f"(call $proxy_replace_header_map_value (i32.const 0) {s(':path')} {s('/new?q=1')})")
    a("p_path_after", f"(call $proxy_get_property {s('request'+chr(0)+'path')} {R})", "buf")
    a("p_url_after", f"(call $proxy_get_property {s('request'+chr(0)+'url_path')} {R})", "buf")
    a("h_rm_status", f"(call $proxy_remove_header_map_value (i32.const 0) {s(':method')})")
    a("h_get_method", f"(call $proxy_get_header_map_value (i32.const 0) {s(':method')} {R})", "buf")
    a("h_add_method", f"(call $proxy_add_header_map_value (i32.const 0) {s(':method')} {s('GET')})")
    a("b_req", f"(call $proxy_get_buffer_bytes (i32.const 0) (i32.const 0) (i32.const 10) {R})", "buf")
    a("b_cfg", f"(call $proxy_get_buffer_bytes (i32.const 7) (i32.const 0) (i32.const -1) {R})", "buf")
    a("b_vm", f"(call $proxy_get_buffer_bytes (i32.const 6) (i32.const 0) (i32.const -1) {R})", "buf")
    a("b_call", f"(call $proxy_get_buffer_bytes (i32.const 4) (i32.const 0) (i32.const -1) {R})", "buf")
    a("b_99", f"(call $proxy_get_buffer_bytes (i32.const 99) (i32.const 0) (i32.const 1) {R})", "buf")
    a("b_set_req", f"(call $proxy_set_buffer_bytes (i32.const 0) (i32.const 0) (i32.const 0) {s('x')})")
    a("b_set_resp", f"(call $proxy_set_buffer_bytes (i32.const 1) (i32.const 0) (i32.const 0) {s('x')})")
    a("eff_bad", "(call $proxy_set_effective_context (i32.const 9999))")
    a("eff_root", "(call $proxy_set_effective_context (global.get $root))")
    a("eff_back", "(call $proxy_set_effective_context (global.get $stream))")
    a("m_bad", f"(call $proxy_define_metric (i32.const 3) {s('m.bad')} {I})")
    a("m_c", f"(call $proxy_define_metric (i32.const 0) {s('m.c')} (i32.const 48))")
    a("m_c2", f"(call $proxy_define_metric (i32.const 0) {s('m.c')} (i32.const 52))")
    a("m_c_same", "(i32.ne (i32.load (i32.const 48)) (i32.load (i32.const 52)))")
    a("m_c_inc0", "(call $proxy_increment_metric (i32.load (i32.const 48)) (i64.const 0))")
    a("m_c_incneg", "(call $proxy_increment_metric (i32.load (i32.const 48)) (i64.const -1))")
    a("m_c_inc2", "(call $proxy_increment_metric (i32.load (i32.const 48)) (i64.const 2))")
    a("m_c_rec", "(call $proxy_record_metric (i32.load (i32.const 48)) (i64.const 5))")
    a("m_c_get", f"(call $proxy_get_metric (i32.load (i32.const 48)) {I})", "i64")
    a("m_g", f"(call $proxy_define_metric (i32.const 1) {s('m.g')} (i32.const 48))")
    a("m_g_dec", "(call $proxy_increment_metric (i32.load (i32.const 48)) (i64.const -1))")
    a("m_g_get", f"(call $proxy_get_metric (i32.load (i32.const 48)) {I})", "i64")
    a("m_g_rec", "(call $proxy_record_metric (i32.load (i32.const 48)) (i64.const 7))")
    a("m_g_get2", f"(call $proxy_get_metric (i32.load (i32.const 48)) {I})", "i64")
    a("m_h", f"(call $proxy_define_metric (i32.const 2) {s('m.h')} (i32.const 48))")
    a("m_h_rec", "(call $proxy_record_metric (i32.load (i32.const 48)) (i64.const 3))")
    a("m_h_inc", "(call $proxy_increment_metric (i32.load (i32.const 48)) (i64.const 1))")
    a("m_h_get", f"(call $proxy_get_metric (i32.load (i32.const 48)) {I})", "i64")
    a("m_unknown", f"(call $proxy_get_metric (i32.const 123456) {I})")
    a("m_inc_unknown", "(call $proxy_increment_metric (i32.const 123456) (i64.const 1))")
    a("m_empty", f"(call $proxy_define_metric (i32.const 0) {s('')} {I})")
    a("sd_miss", f"(call $proxy_get_shared_data {s('k-miss')} {R} (i32.const 24))", "buf")
    a("sd_set", f"(call $proxy_set_shared_data {s('k')} {s('v')} (i32.const 0))")
    a("sd_get", f"(call $proxy_get_shared_data {s('k')} {R} (i32.const 24))", "buf")
    a("sd_stale", f"(call $proxy_set_shared_data {s('k')} {s('v2')} (i32.const 123456))")
    a("sd_newcas", f"(call $proxy_set_shared_data {s('k2')} {s('v')} (i32.const 777))")
    a("sd_empty", f"(call $proxy_set_shared_data {s('k3')} {s('')} (i32.const 0))")
    a("sd_get_empty", f"(call $proxy_get_shared_data {s('k3')} {R} (i32.const 24))", "buf")
    a("q_resolve_miss", f"(call $proxy_resolve_shared_queue {s('probe')} {s('q-miss')} (i32.const 56))")
    a("q_reg", f"(call $proxy_register_shared_queue {s('q')} (i32.const 56))")
    a("q_reg2", f"(call $proxy_register_shared_queue {s('q')} (i32.const 60))")
    a("q_same", "(i32.ne (i32.load (i32.const 56)) (i32.load (i32.const 60)))")
    a("q_deq_empty", f"(call $proxy_dequeue_shared_queue (i32.load (i32.const 56)) {R})", "buf")
    a("q_enq", f"(call $proxy_enqueue_shared_queue (i32.load (i32.const 56)) {s('item')})")
    a("q_deq", f"(call $proxy_dequeue_shared_queue (i32.load (i32.const 56)) {R})", "buf")
    a("q_deq_unknown", f"(call $proxy_dequeue_shared_queue (i32.const 99999) {R})", "buf")
    a("q_enq_unknown", f"(call $proxy_enqueue_shared_queue (i32.const 99999) {s('x')})")
    a("q_resolve_own", f"(call $proxy_resolve_shared_queue {s('')} {s('q')} (i32.const 60))")
    a("q_resolve_vm", f"(call $proxy_resolve_shared_queue {s('probe')} {s('q')} (i32.const 60))")
    full = hmap([(":method", "GET"), (":path", "/x"), (":authority", "up")])
    nopath = hmap([(":method", "GET"), (":authority", "up")])
    noauth = hmap([(":method", "GET"), (":path", "/x")])
    a("hc_unknown", f"(call $proxy_http_call {s('nope')} {full} (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 1000) (i32.const 32))")
    a("hc_nopath", f"(call $proxy_http_call {s('up')} {nopath} (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 1000) (i32.const 32))")
    a("hc_noauth", f"(call $proxy_http_call {s('up')} {noauth} (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 1000) (i32.const 32))")
    a("hc_badmap", f"(call $proxy_http_call {s('up')} {s(bytes([9,0,0,0,1]))} (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 1000) (i32.const 32))")
    a("gc_unknown", f"(call $proxy_grpc_call {s('nope')} {s('svc')} {s('m')} (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 1000) (i32.const 32))")
    a("ff_unknown", f"(call $proxy_call_foreign_function {s('nope')} {s('')} {R})", "buf")
    a("status", f"(call $proxy_get_status (i32.const 24) {R})", "buf")
    a("cont_up", "(call $proxy_continue_stream (i32.const 3))")
    a("cont_9", "(call $proxy_continue_stream (i32.const 9))")
    a("close_9", "(call $proxy_close_stream (i32.const 9))")
    #a("cont_resp", "(call $proxy_continue_stream (i32.const 1))")
    a("done", "(call $proxy_done)")
    a("tick0", "(call $proxy_set_tick_period_milliseconds (i32.const 0))")
    a("pairs_bad", f"(call $proxy_set_header_map_pairs (i32.const 1) {s(bytes([5,0,0,0,1,0,0,0]))})")
    a("oob_ret", f"(call $proxy_get_header_map_value (i32.const 0) {s(':path')} {OOB} (i32.const 20))")
    a("oob_key", f"(call $proxy_get_header_map_value (i32.const 0) {OOB} (i32.const 4) {R})", "buf")
    a("oob_prop", f"(call $proxy_get_property {OOB} (i32.const 8) {R})", "buf")
    a("oob_log", f"(call $proxy_log (i32.const 2) {OOB} (i32.const 100))")
    a("oob_time", "(call $proxy_get_current_time_nanoseconds (i32.const 0x7ffffffc))")
    import os
    lo, hi = int(os.environ.get('LO', 0)), int(os.environ.get('HI', len(P)))
    return P[lo:hi]

def probes_b():
    P = []
    a = lambda label, expr, kind=None: P.append((label, expr, kind))
    a("status", f"(call $proxy_get_header_map_value (i32.const 2) {s(':status')} {R})", "buf")
    a("req_path", f"(call $proxy_get_header_map_value (i32.const 0) {s(':path')} {R})", "buf")
    a("req_late", f"(call $proxy_replace_header_map_value (i32.const 0) {s('x-late')} {s('1')})")
    a("req_late_get", f"(call $proxy_get_header_map_value (i32.const 0) {s('x-late')} {R})", "buf")
    for label, path, kind in [
        ("p_code", "response\0code", "buf"), ("p_details", "response\0code_details", "buf"),
        ("p_flags", "response\0flags", "buf"), ("p_rh", "response\0headers\0x-up", "buf"),
        ("p_up_addr", "upstream\0address", "len"), ("p_up_port", "upstream\0port", "len"),
        ("p_cluster", "cluster_name", "buf"), ("p_route", "route_name", "buf"),
        ("p_rsize", "response\0size", "buf"), ("p_rtotal", "response\0total_size", "buf"),
        ("p_qsize", "request\0size", "buf"), ("p_qtotal", "request\0total_size", "buf"),
        ("p_path", "request\0path", "buf"), ("p_grpc", "response\0grpc_status", "buf"),
        ("p_dur", "request\0duration", "len"), ("p_up_tls", "upstream\0tls_version", "buf"),
        ("p_cm", "cluster_metadata", "len"), ("p_rm", "route_metadata", "len"), ("p_xroute", "xds\0route_name", "buf"), ("p_xcluster", "xds\0cluster_name", "buf"),
    ]:
        a(label, f"(call $proxy_get_property {s(path)} {R})", kind)
    a("b_resp", f"(call $proxy_get_buffer_bytes (i32.const 1) (i32.const 0) (i32.const 10) {R})", "buf")
    a("b_req", f"(call $proxy_get_buffer_bytes (i32.const 0) (i32.const 0) (i32.const 10) {R})", "buf")
    a("rt_pairs", f"(call $proxy_get_header_map_pairs (i32.const 3) {R})", "len")
    a("qt_pairs", f"(call $proxy_get_header_map_pairs (i32.const 1) {R})", "len")
    a("rh_status_set", f"(call $proxy_replace_header_map_value (i32.const 2) {s(':status')} {s('201')})")
    a("rh_rm_status", f"(call $proxy_remove_header_map_value (i32.const 2) {s('x-up')})")
    return P

def probes_c():
    P = []
    a = lambda label, expr, kind=None: P.append((label, expr, kind))
    a("all", f"(call $proxy_get_buffer_bytes (i32.const 0) (i32.const 0) (i32.const -1) {R})", "buf")
    a("past", f"(call $proxy_get_buffer_bytes (i32.const 0) (i32.const 100) (i32.const 10) {R})", "buf")
    a("atend", f"(call $proxy_get_buffer_bytes (i32.const 0) (i32.const 6) (i32.const 10) {R})", "buf")
    a("ovf", f"(call $proxy_get_buffer_bytes (i32.const 0) (i32.const 2) (i32.const 0x7fffffff) {R})", "buf")
    a("zero", f"(call $proxy_get_buffer_bytes (i32.const 0) (i32.const 0) (i32.const 0) {R})", "buf")
    a("prepend", f"(call $proxy_set_buffer_bytes (i32.const 0) (i32.const 0) (i32.const 0) {s('P')})")
    a("g1", f"(call $proxy_get_buffer_bytes (i32.const 0) (i32.const 0) (i32.const -1) {R})", "buf")
    a("append", f"(call $proxy_set_buffer_bytes (i32.const 0) (i32.const 0x7fffffff) (i32.const 0) {s('A')})")
    a("g2", f"(call $proxy_get_buffer_bytes (i32.const 0) (i32.const 0) (i32.const -1) {R})", "buf")
    a("append_len", f"(call $proxy_set_buffer_bytes (i32.const 0) (i32.const 8) (i32.const 0) {s('B')})")
    a("g3", f"(call $proxy_get_buffer_bytes (i32.const 0) (i32.const 0) (i32.const -1) {R})", "buf")
    a("splice", f"(call $proxy_set_buffer_bytes (i32.const 0) (i32.const 2) (i32.const 1) {s('M')})")
    a("g4", f"(call $proxy_get_buffer_bytes (i32.const 0) (i32.const 0) (i32.const -1) {R})", "buf")
    a("replace_part", f"(call $proxy_set_buffer_bytes (i32.const 0) (i32.const 0) (i32.const 3) {s('Q')})")
    a("g5", f"(call $proxy_get_buffer_bytes (i32.const 0) (i32.const 0) (i32.const -1) {R})", "buf")
    a("h_path", f"(call $proxy_get_header_map_value (i32.const 0) {s(':path')} {R})", "buf")
    a("h_after", f"(call $proxy_replace_header_map_value (i32.const 0) {s('x-after')} {s('1')})")
    a("t_add", f"(call $proxy_add_header_map_value (i32.const 1) {s('x-trl')} {s('1')})")
    a("p_size", f"(call $proxy_get_property {s('request'+chr(0)+'size')} {R})", "buf")
    a("b_resp", f"(call $proxy_get_buffer_bytes (i32.const 1) (i32.const 0) (i32.const 10) {R})", "buf")
    return P

def probes_l():
    P = []
    a = lambda label, expr, kind=None: P.append((label, expr, kind))
    for label, path, kind in [
        ("p_code", "response\0code", "buf"), ("p_details", "response\0code_details", "buf"),
        ("p_flags", "response\0flags", "buf"), ("p_up_addr", "upstream\0address", "len"),
        ("p_qsize", "request\0size", "buf"), ("p_qtotal", "request\0total_size", "buf"),
        ("p_rsize", "response\0size", "buf"), ("p_rtotal", "response\0total_size", "buf"),
        ("p_path", "request\0path", "buf"), ("p_route", "route_name", "buf"), ("p_cluster", "cluster_name", "buf"),
        ("p_xroute", "xds\0route_name", "buf"), ("p_xcluster", "xds\0cluster_name", "buf"),
        ("p_dur", "request\0duration", "len"), ("p_grpc", "response\0grpc_status", "buf"),
        ("p_conn_id", "connection\0id", "len"), ("p_rh", "response\0headers\0x-up", "buf"),
        ("p_qh", "request\0headers\0x-a", "buf"), ("p_trl", "response\0trailers", "len"),
    ]:
        a(label, f"(call $proxy_get_property {s(path)} {R})", kind)
    a("h_path", f"(call $proxy_get_header_map_value (i32.const 0) {s(':path')} {R})", "buf")
    a("h_status", f"(call $proxy_get_header_map_value (i32.const 2) {s(':status')} {R})", "buf")
    a("h_set", f"(call $proxy_replace_header_map_value (i32.const 2) {s('x-l')} {s('1')})")
    a("b_resp", f"(call $proxy_get_buffer_bytes (i32.const 1) (i32.const 0) (i32.const 10) {R})", "buf")
    return P

def emit(P, name):
    lines = [f"(func ${name} (local $st i32)"]
    for label, expr, kind in P:
        lines.append(f"  ;; {label}")
        lines.append("  (i64.store (i32.const 16) (i64.const 0)) (i64.store (i32.const 24) (i64.const 0))")
        lines.append(f"  (call $str {s(label + '=')})")
        lines.append(f"  (local.set $st {expr})")
        lines.append("  (call $num (local.get $st))")
        if kind:
            lines.append("  (if (i32.eqz (local.get $st)) (then (call $byte (i32.const 47))")
            if kind == "buf": lines.append("    (call $hex (i32.load (i32.const 16)) (i32.load (i32.const 20)))))")
            elif kind == "len": lines.append("    (call $num (i32.load (i32.const 20)))))")
            elif kind == "i64": lines.append("    (call $num (i32.wrap_i64 (i64.load (i32.const 24))))))")
        lines.append("  (call $byte (i32.const 59))")
    lines.append(")")
    return "\n".join(lines)

IMPORTS = """
(import "env" "proxy_log" (func $proxy_log (param i32 i32 i32) (result i32)))
(import "env" "proxy_get_log_level" (func $proxy_get_log_level (param i32) (result i32)))
(import "env" "proxy_get_current_time_nanoseconds" (func $proxy_get_current_time_nanoseconds (param i32) (result i32)))
(import "env" "proxy_set_tick_period_milliseconds" (func $proxy_set_tick_period_milliseconds (param i32) (result i32)))
(import "env" "proxy_get_property" (func $proxy_get_property (param i32 i32 i32 i32) (result i32)))
(import "env" "proxy_set_property" (func $proxy_set_property (param i32 i32 i32 i32) (result i32)))
(import "env" "proxy_get_buffer_bytes" (func $proxy_get_buffer_bytes (param i32 i32 i32 i32 i32) (result i32)))
(import "env" "proxy_set_buffer_bytes" (func $proxy_set_buffer_bytes (param i32 i32 i32 i32 i32) (result i32)))
(import "env" "proxy_get_header_map_pairs" (func $proxy_get_header_map_pairs (param i32 i32 i32) (result i32)))
(import "env" "proxy_set_header_map_pairs" (func $proxy_set_header_map_pairs (param i32 i32 i32) (result i32)))
(import "env" "proxy_get_header_map_value" (func $proxy_get_header_map_value (param i32 i32 i32 i32 i32) (result i32)))
(import "env" "proxy_add_header_map_value" (func $proxy_add_header_map_value (param i32 i32 i32 i32 i32) (result i32)))
(import "env" "proxy_replace_header_map_value" (func $proxy_replace_header_map_value (param i32 i32 i32 i32 i32) (result i32)))
(import "env" "proxy_remove_header_map_value" (func $proxy_remove_header_map_value (param i32 i32 i32) (result i32)))
(import "env" "proxy_get_header_map_size" (func $proxy_get_header_map_size (param i32 i32) (result i32)))
(import "env" "proxy_send_local_response" (func $proxy_send_local_response (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
(import "env" "proxy_continue_stream" (func $proxy_continue_stream (param i32) (result i32)))
(import "env" "proxy_close_stream" (func $proxy_close_stream (param i32) (result i32)))
(import "env" "proxy_http_call" (func $proxy_http_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
(import "env" "proxy_grpc_call" (func $proxy_grpc_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
(import "env" "proxy_get_shared_data" (func $proxy_get_shared_data (param i32 i32 i32 i32 i32) (result i32)))
(import "env" "proxy_set_shared_data" (func $proxy_set_shared_data (param i32 i32 i32 i32 i32) (result i32)))
(import "env" "proxy_register_shared_queue" (func $proxy_register_shared_queue (param i32 i32 i32) (result i32)))
(import "env" "proxy_resolve_shared_queue" (func $proxy_resolve_shared_queue (param i32 i32 i32 i32 i32) (result i32)))
(import "env" "proxy_dequeue_shared_queue" (func $proxy_dequeue_shared_queue (param i32 i32 i32) (result i32)))
(import "env" "proxy_enqueue_shared_queue" (func $proxy_enqueue_shared_queue (param i32 i32 i32) (result i32)))
(import "env" "proxy_define_metric" (func $proxy_define_metric (param i32 i32 i32 i32) (result i32)))
(import "env" "proxy_increment_metric" (func $proxy_increment_metric (param i32 i64) (result i32)))
(import "env" "proxy_record_metric" (func $proxy_record_metric (param i32 i64) (result i32)))
(import "env" "proxy_get_metric" (func $proxy_get_metric (param i32 i32) (result i32)))
(import "env" "proxy_set_effective_context" (func $proxy_set_effective_context (param i32) (result i32)))
(import "env" "proxy_done" (func $proxy_done (result i32)))
(import "env" "proxy_call_foreign_function" (func $proxy_call_foreign_function (param i32 i32 i32 i32 i32 i32) (result i32)))
(import "env" "proxy_get_status" (func $proxy_get_status (param i32 i32 i32) (result i32)))
"""

OUT = 131072
HEAP = 196608

fa, fb, fc, fl = emit(probes_a(), "probes_a"), emit(probes_b(), "probes_b"), emit(probes_c(), "probes_c"), emit(probes_l(), "probes_l")
hex_off, _ = sp("0123456789abcdef")
details = s("probe_details")
lhdrs = hmap([("x-local", "1")])

wat = f"""(module
{IMPORTS}
(memory (export "memory") 8)
(global $bump (mut i32) (i32.const {HEAP}))
(global $out (mut i32) (i32.const 0))
(global $root (mut i32) (i32.const 0))
(global $stream (mut i32) (i32.const 0))
(global $mode (mut i32) (i32.const 0))
(func (export "proxy_abi_version_0_2_1"))
(func (export "proxy_on_memory_allocate") (param $n i32) (result i32) (local $p i32)
  (local.set $p (global.get $bump))
  (global.set $bump (i32.and (i32.add (i32.add (global.get $bump) (local.get $n)) (i32.const 7)) (i32.const -8)))
  (if (i32.gt_u (global.get $bump) (i32.mul (memory.size) (i32.const 65536)))
    (then (drop (memory.grow (i32.add (i32.const 1) (i32.shr_u (i32.sub (global.get $bump) (i32.mul (memory.size) (i32.const 65536))) (i32.const 16)))))))
  (local.get $p))
(func $byte (param $b i32)
  (i32.store8 (i32.add (i32.const {OUT}) (global.get $out)) (local.get $b))
  (global.set $out (i32.add (global.get $out) (i32.const 1))))
(func $str (param $p i32) (param $n i32) (local $i i32)
  (block $d (loop $l (br_if $d (i32.ge_u (local.get $i) (local.get $n)))
    (call $byte (i32.load8_u (i32.add (local.get $p) (local.get $i))))
    (local.set $i (i32.add (local.get $i) (i32.const 1))) (br $l))))
(func $num (param $v i32)
  (if (i32.lt_s (local.get $v) (i32.const 0)) (then (call $byte (i32.const 45)) (local.set $v (i32.sub (i32.const 0) (local.get $v)))))
  (if (i32.ge_u (local.get $v) (i32.const 10)) (then (call $num (i32.div_u (local.get $v) (i32.const 10)))))
  (call $byte (i32.add (i32.const 48) (i32.rem_u (local.get $v) (i32.const 10)))))
(func $hex (param $p i32) (param $n i32) (local $i i32) (local $b i32)
  (call $byte (i32.const 91))
  (block $d (loop $l (br_if $d (i32.ge_u (local.get $i) (local.get $n)))
    (local.set $b (i32.load8_u (i32.add (local.get $p) (local.get $i))))
    (if (i32.and (i32.ge_u (local.get $b) (i32.const 33)) (i32.and (i32.le_u (local.get $b) (i32.const 126)) (i32.and (i32.ne (local.get $b) (i32.const 92)) (i32.and (i32.ne (local.get $b) (i32.const 59)) (i32.ne (local.get $b) (i32.const 93))))))
      (then (call $byte (local.get $b)))
      (else (call $byte (i32.const 92))
        (call $byte (i32.load8_u (i32.add (i32.const {hex_off}) (i32.shr_u (local.get $b) (i32.const 4)))))
        (call $byte (i32.load8_u (i32.add (i32.const {hex_off}) (i32.and (local.get $b) (i32.const 15)))))))
    (local.set $i (i32.add (local.get $i) (i32.const 1))) (br $l)))
  (call $byte (i32.const 93)))
(func $reset (global.set $out (i32.const 0)) (global.set $bump (i32.const {HEAP})))
(func (export "proxy_on_context_create") (param $c i32) (param $p i32)
  (if (i32.eqz (local.get $p)) (then (global.set $root (local.get $c))) (else (global.set $stream (local.get $c)))))
(func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
(func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
(func (export "proxy_on_request_headers") (param $c i32) (param $n i32) (param $eos i32) (result i32) (local $st i32) (local $m i32)
  (global.set $stream (local.get $c))
  (call $reset)
  (local.set $st (call $proxy_get_header_map_value (i32.const 0) {s(':path')} (i32.const 16) (i32.const 20)))
  (local.set $m (i32.load8_u (i32.add (i32.load (i32.const 16)) (i32.const 1))))
  (global.set $mode (local.get $m))
  (if (i32.eq (local.get $m) (i32.const 97)) (then
    (call $str {s('n=')}) (call $num (local.get $n)) (call $str {s(';eos=')}) (call $num (local.get $eos)) (call $byte (i32.const 59))
    (call $probes_a)
    (drop (call $proxy_send_local_response (i32.const 200) {details} (i32.const {OUT}) (global.get $out) {lhdrs} (i32.const -1)))
    (return (i32.const 1))))
  (if (i32.eq (local.get $m) (i32.const 106)) (then
    (drop (call $proxy_send_local_response (i32.const 200) {details} {s('{}')} {hmap([("content-type", "application/json"), ("x-b", "1"), ("x-b", "2")])} (i32.const -1)))
    (return (i32.const 1))))
  (if (i32.eq (local.get $m) (i32.const 101)) (then
    (drop (call $proxy_send_local_response (i32.const 403) {s('denied by probe')} (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 7)))
    (return (i32.const 1))))
  (if (i32.eq (local.get $m) (i32.const 103)) (then
    (drop (call $proxy_send_local_response (i32.const 503) {s('')} {s('plain')} (i32.const 0) (i32.const 0) (i32.const 14)))
    (return (i32.const 1))))
  (if (i32.eq (local.get $m) (i32.const 108)) (then
    (drop (call $proxy_get_shared_data {s('log')} (i32.const 16) (i32.const 20) (i32.const 24)))
    (drop (call $proxy_send_local_response (i32.const 200) {details} (i32.load (i32.const 16)) (i32.load (i32.const 20)) {lhdrs} (i32.const -1)))
    (return (i32.const 1))))
  (if (i32.eq (local.get $m) (i32.const 99)) (then
    (drop (call $proxy_remove_header_map_value (i32.const 0) {s('content-length')}))))
  (i32.const 0))
(func (export "proxy_on_request_body") (param $c i32) (param $n i32) (param $eos i32) (result i32) (local $st i32)
  (if (i32.ne (global.get $mode) (i32.const 99)) (then (return (i32.const 0))))
  (if (i32.eqz (local.get $eos)) (then (return (i32.const 1))))
  (call $reset)
  (call $str {s('n=')}) (call $num (local.get $n)) (call $byte (i32.const 59))
  (call $probes_c)
  (drop (call $proxy_set_buffer_bytes (i32.const 0) (i32.const 0) (i32.const 0x7fffffff) (i32.const {OUT}) (global.get $out)))
  (i32.const 0))
(func (export "proxy_on_response_headers") (param $c i32) (param $n i32) (param $eos i32) (result i32) (local $st i32)
  (if (i32.ne (global.get $mode) (i32.const 98)) (then (return (i32.const 0))))
  (call $reset)
  (call $str {s('n=')}) (call $num (local.get $n)) (call $str {s(';eos=')}) (call $num (local.get $eos)) (call $byte (i32.const 59))
  (call $probes_b)
  (drop (call $proxy_add_header_map_value (i32.const 2) {s('x-probe')} (i32.const {OUT}) (global.get $out)))
  (i32.const 0))
(func (export "proxy_on_response_body") (param i32 i32 i32) (result i32) (i32.const 0))
(func (export "proxy_on_http_call_response") (param i32 i32 i32 i32 i32))
(func (export "proxy_on_log") (param $c i32)
  (if (i32.eq (global.get $mode) (i32.const 98)) (then
    (call $reset) (call $probes_l)
    (drop (call $proxy_set_shared_data {s('log')} (i32.const {OUT}) (global.get $out) (i32.const 0))))))
(func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
(func (export "proxy_on_delete") (param i32))
{fa}
{fb}
{fc}
{fl}
(data (i32.const {DBASE}) "@@DATA@@")
)
"""
wat = wat.replace("@@DATA@@", "".join("\\%02x" % b for b in DATA))
open(sys.argv[1], "w").write(wat)
