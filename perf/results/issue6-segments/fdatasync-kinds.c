/* fdatasync costs by kind of write on the local file system (files under /var/tmp): overwrite inside a written file, the same paired with a second file, append, fallocated. cc -O2 fdatasync-kinds.c && ./a.out */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec/1e9;}
int main(int argc,char**argv){
  int n=2000; char buf[4200]; memset(buf,7,sizeof buf);
  // preallocated + written (not just fallocated) file
  int fd=open("/var/tmp/pre.j",O_RDWR|O_CREAT|O_TRUNC,0600);
  char *z=calloc(1,1<<20); for(int i=0;i<40;i++) write(fd,z,1<<20); fsync(fd);
  int lg=open("/var/tmp/pre.l",O_RDWR|O_CREAT|O_TRUNC,0600);
  for(int i=0;i<8;i++) write(lg,z,1<<20); fsync(lg);
  double t=now();
  for(int i=0;i<n;i++){ pwrite(fd,buf,4200,(off_t)i*8192); fdatasync(fd);} 
  printf("overwrite prewritten + fdatasync: %.0f/s\n", n/(now()-t));
  t=now();
  for(int i=0;i<n;i++){ pwrite(fd,buf,4200,(off_t)i*8192); fdatasync(fd); pwrite(lg,buf,200,(off_t)i*512); fdatasync(lg);} 
  printf("overwrite both j+log fdatasync: %.0f/s\n", n/(now()-t));
  int ap=open("/var/tmp/pre.a",O_RDWR|O_CREAT|O_TRUNC|O_APPEND,0600);
  t=now();
  for(int i=0;i<n;i++){ write(ap,buf,4200); fdatasync(ap);} 
  printf("append + fdatasync: %.0f/s\n", n/(now()-t));
  int fa=open("/var/tmp/pre.f",O_RDWR|O_CREAT|O_TRUNC,0600); fallocate(fa,0,0,40<<20);
  t=now();
  for(int i=0;i<n;i++){ pwrite(fa,buf,4200,(off_t)i*8192); fdatasync(fa);} 
  printf("fallocated (unwritten) + fdatasync: %.0f/s\n", n/(now()-t));
  return 0;}
