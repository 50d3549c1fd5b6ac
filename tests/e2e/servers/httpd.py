# A quiet, threaded static file server for the proxy tests: httpd.py ADDRESS PORT DIRECTORY
import functools, http.server, sys
class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 512
    daemon_threads = True
class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass
handler = functools.partial(Quiet, directory=sys.argv[3])
Server((sys.argv[1], int(sys.argv[2])), handler).serve_forever()
